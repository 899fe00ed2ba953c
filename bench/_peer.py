"""The baseline's two processes: the raw components on the gateway's path, without its logic.

``sender``   consumes a queue (manual acks, ``--prefetch`` in flight) and POSTs each
             body over ``--concurrency`` keep-alive mutual-TLS connections to the receiver;
             acks after the answer.
``receiver`` an aiohttp server over mutual TLS whose handler publishes the body to a
             queue with a confirm and answers 200.

Both use the TLS contexts the gateways build from the same provisioned files
(``gateway.trust.identity.TrustStore``): the sender is XA's configuration, the receiver XB's.

Run: ``python bench/_peer.py receiver --config XB/gateway.toml --queue OUT --port P``
     ``python bench/_peer.py sender --config XA/gateway.toml --queue IN --port P``
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aio_pika
import aiohttp
from aiohttp import web

from gateway.config.files import load_settings
from gateway.trust.identity import TrustStore


async def receiver(config: str, queue_name: str, port: int) -> None:
    s = load_settings(config)
    ctx = TrustStore(s.partners).server_context(s.tls)
    connection = await aio_pika.connect_robust(s.broker.url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=request.headers.get("X-Message-Id"),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=queue_name,
            mandatory=True,
            timeout=10,
        )
        return web.Response(text="ok")

    app = web.Application(client_max_size=s.partner_api.max_body_bytes)
    app.router.add_post("/v1/messages", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, s.partner_api.host, port, ssl_context=ctx, reuse_address=True)
    await site.start()
    await _until_signalled()
    await runner.cleanup()
    await connection.close()


async def sender(
    config: str, partner: str, queue_name: str, concurrency: int, prefetch: int, port: int
) -> None:
    s = load_settings(config)
    target = s.partners[partner]
    ctx = TrustStore(s.partners).client_context(partner, s.tls)
    url = f"https://127.0.0.1:{port}/v1/messages"
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency, keepalive_timeout=60)
    session = aiohttp.ClientSession(connector=connector)
    connection = await aio_pika.connect_robust(s.broker.url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(queue_name, ensure=True)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with session.post(
            url,
            data=message.body,
            headers={"Content-Type": "application/json", "X-Message-Id": message.message_id or ""},
            server_hostname=target.server_name or None,
        ) as resp:
            await resp.read()
            if resp.status == 200:
                await message.ack()
            else:
                await message.nack(requeue=True)

    await queue.consume(on_message, no_ack=False)
    await _until_signalled()
    await session.close()
    await connection.close()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["sender", "receiver"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--partner", default="XB")
    parser.add_argument("--concurrency", type=int, default=32, help="connections")
    parser.add_argument("--prefetch", type=int, default=256, help="messages in flight")
    parser.add_argument("--port", type=int, required=True, help="the receiver's port")
    args = parser.parse_args()
    if args.role == "receiver":
        asyncio.run(receiver(args.config, args.queue, args.port))
    else:
        asyncio.run(
            sender(
                args.config, args.partner, args.queue, args.concurrency, args.prefetch, args.port
            )
        )


if __name__ == "__main__":
    main()
