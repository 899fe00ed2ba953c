"""Relay throughput against a raw aio-pika consume-then-publish-with-confirms loop, same run.

Both loops move N persistent messages from one quorum queue to a topic exchange whose
default quorum queue takes them, acknowledging each source message only after the
broker confirmed the publish (the gateway's rule). ``raw`` uses aio-pika directly;
``relay`` uses the gateway's ``Relay`` (its topology, ``consume``, ``publish`` with
mandatory + confirm + timeout handling). Run: ``.venv/bin/python bench/bench_relay.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aio_pika

from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from maagw_testing.broker import RABBITMQ_URL, delete_topology

BODY = b"x" * 3000


async def _fill(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str, n: int) -> None:
    ex = await channel.get_exchange(exchange)
    pending: list[Any] = []
    for i in range(n):
        pending.append(ex.publish(aio_pika.Message(BODY, message_id=str(i)), routing_key=key))
        if len(pending) >= 200:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def raw_loop(n: int, prefetch: int) -> float:
    """aio-pika only: consume, publish with confirm, ack."""
    names = Names(f"bench-raw-{uuid.uuid4().hex[:6]}.")
    setup = Relay(RABBITMQ_URL, names)
    await setup.connect(["XB"])
    await setup.close()
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        fill = await conn.channel()
        await _fill(fill, names.outbound, "XB", n)
        pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
        inbound = await pub.get_exchange(names.inbound)
        cons = await conn.channel()
        await cons.set_qos(prefetch_count=prefetch)
        queue = await cons.get_queue(names.outbound_queue("XB"))
        done = asyncio.Event()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await inbound.publish(
                aio_pika.Message(
                    message.body,
                    message_id=message.message_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="XB.maa.request",
                mandatory=True,
            )
            await message.ack()
            count += 1
            if count == n:
                done.set()

        started = time.perf_counter()
        await queue.consume(on_message)
        await done.wait()
        return n / (time.perf_counter() - started)
    finally:
        await conn.close()
        await delete_topology(RABBITMQ_URL, names, ["XB"])


async def relay_loop(n: int, prefetch: int) -> float:
    """The gateway's Relay: the same work through its consume/publish."""
    names = Names(f"bench-relay-{uuid.uuid4().hex[:6]}.")
    relay = Relay(RABBITMQ_URL, names, prefetch=prefetch)
    await relay.connect(["XB"])
    conn = await aio_pika.connect(RABBITMQ_URL)
    try:
        await _fill(await conn.channel(), names.outbound, "XB", n)
        done = asyncio.Event()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await relay.publish(
                names.inbound,
                "XB.maa.request",
                message.body,
                message_id=message.message_id,
                message_type="maa.request",
                headers={"x-maagw-sender": "XA"},
            )
            await message.ack()
            count += 1
            if count == n:
                done.set()

        started = time.perf_counter()
        await relay.consume(names.outbound_queue("XB"), on_message)
        await done.wait()
        return n / (time.perf_counter() - started)
    finally:
        await conn.close()
        await relay.close()
        await delete_topology(RABBITMQ_URL, names, ["XB"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    raws, relays = [], []
    for _ in range(args.rounds):  # interleaved: the machine is noisy
        raws.append(await raw_loop(args.messages, args.prefetch))
        relays.append(await relay_loop(args.messages, args.prefetch))
    raw, rel = max(raws), max(relays)
    print(f"messages per round: {args.messages}, prefetch {args.prefetch}, quorum queues")
    print(
        f"raw aio-pika consume->publish(confirm)->ack : {raw:8.0f} msg/s  (rounds: "
        f"{', '.join(f'{r:.0f}' for r in raws)})"
    )
    print(
        f"gateway Relay, same path                    : {rel:8.0f} msg/s  (rounds: "
        f"{', '.join(f'{r:.0f}' for r in relays)})"
    )
    print(f"relay / raw                                 : {rel / raw:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
