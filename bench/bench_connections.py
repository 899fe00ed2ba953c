"""Memory of one gateway process holding many authenticated partner connections.

Run: ``.venv/bin/python bench/bench_connections.py [--connections 500] [--rounds 2]
[--set max_connections_per_partner=1000] [--env MALLOC_ARENA_MAX=2]``
(needs RabbitMQ on 127.0.0.1:5672, as the gateway connects to it at start).

XB runs as a separate ``maagw serve`` process (provisioned by ``gateway.demo.provision``);
this process opens ``--connections`` mutual-TLS connections at once with XA's client
certificate, sends one ``GET /v1/ping`` on each (so that every connection is past the
gateway's identity check and has served a request), holds them, then closes them all.
It prints XB's RSS (``VmRSS``) before, while the connections are open, and a few
seconds after they closed, for each of ``--rounds`` bursts, and how many connections
the gateway refused. ``--set`` adds settings to XB's ``[partner_api]`` table; ``--env``
sets environment variables of the gateway process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import memory_mb

PING = b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n"
BROKER = os.environ.get("MAAGW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: how long the gateway is given to free what closed connections held
SETTLE_SECONDS = 5.0


def _context(root: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(root / "XB" / "ca" / "ca.pem"))
    xa = root / "XA" / "certs"
    ctx.load_cert_chain(xa / "tls-client.pem", xa / "tls-client.key")
    return ctx


async def _open(
    port: int, ctx: ssl.SSLContext, gate: asyncio.Semaphore
) -> asyncio.StreamWriter | None:
    """One connection that served a ping, or None if the gateway refused or dropped it."""
    async with gate:  # at most this many handshakes at once: the listen backlog is finite
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="gw.xb.test"),
                30,
            )
        except (OSError, TimeoutError):
            return None
    try:
        writer.write(PING)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        writer.close()
        return None
    if not head.startswith(b"HTTP/1.1 204"):
        writer.close()
        return None
    return writer


async def burst(port: int, ctx: ssl.SSLContext, count: int, pid: int) -> tuple[int, float]:
    """Open ``count`` connections, read XB's RSS while they are open, close them all."""
    gate = asyncio.Semaphore(64)
    opened = await asyncio.gather(*(_open(port, ctx, gate) for _ in range(count)))
    writers = [w for w in opened if w is not None]
    await asyncio.sleep(1.0)
    held = memory_mb(pid, "VmRSS")
    for w in writers:
        w.close()
    for w in writers:
        with contextlib.suppress(OSError, ssl.SSLError):
            await w.wait_closed()
    return len(writers), held


def _configure(config: Path, settings: list[str]) -> None:
    if settings:
        text = config.read_text()
        config.write_text(
            text.replace("[partner_api]\n", "[partner_api]\n" + "\n".join(settings) + "\n", 1)
        )


async def main(connections: int, rounds: int, settings: list[str], env: list[str]) -> None:
    from gateway.config.files import load_settings
    from gateway.demo import provision
    from gateway.relay.topology import Names
    from maagw_testing.broker import delete_topology, start_gateway_process, unique_prefix

    root = Path(tempfile.mkdtemp(prefix="maagw-bench-conn-"))
    prefix = unique_prefix("bench")
    for item in env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    try:
        prov = provision(root, BROKER, prefixes={"XA": prefix + "xa.", "XB": prefix + "xb."})
        _configure(prov["XB"].config, settings)
        xb = load_settings(prov["XB"].config)
        proc = start_gateway_process(prov["XB"].config, root / "xb.log")
        try:
            ctx = _context(root)
            await asyncio.sleep(1.0)
            print(f"settings: {settings or 'defaults'}; env: {env or 'none'}")
            print(f"XB RSS at start: {memory_mb(proc.pid, 'VmRSS'):6.1f} MB")
            for n in range(1, rounds + 1):
                started = time.monotonic()
                served, held = await burst(xb.partner_api.port, ctx, connections, proc.pid)
                await asyncio.sleep(SETTLE_SECONDS)
                after = memory_mb(proc.pid, "VmRSS")
                print(
                    f"round {n}: {served}/{connections} connections served "
                    f"({connections - served} refused) in {time.monotonic() - started:4.1f} s; "
                    f"RSS while open {held:6.1f} MB, {SETTLE_SECONDS:g} s after closing "
                    f"{after:6.1f} MB"
                )
            print(f"XB peak RSS: {memory_mb(proc.pid, 'VmHWM'):6.1f} MB")
        finally:
            proc.terminate()
            proc.wait(30)
            await delete_topology(BROKER, Names(xb.broker.prefix), list(xb.partners))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="[partner_api] key=value")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the gateway")
    args = parser.parse_args()
    asyncio.run(main(args.connections, args.rounds, args.set, args.env))
