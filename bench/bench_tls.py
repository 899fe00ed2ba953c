"""Mutual-TLS figures of one gateway process: new connections/s and keep-alive requests/s.

Run: ``.venv/bin/python bench/bench_tls.py [--seconds 5] [--clients 2] [--threads 8]``
(needs RabbitMQ on 127.0.0.1:5672, as the gateway connects to it at start).

One gateway (XB, provisioned by ``gateway.demo.provision``) runs in this process;
the load comes from ``--clients`` separate processes (multiprocessing), each with
``--threads`` threads holding XA's client certificate, so that the figures are
the server process's.

connections = a new TCP connection, the TLS 1.3 handshake with XA's client
              certificate (ECDSA P-256), the gateway's per-partner check (CA, pins,
              CRL, validity), then one ``GET /v1/ping`` answered 204, then close.
keep-alive  = ``GET /v1/ping`` (identity checked per request, answered 204) over
              ``--threads`` already-open connections per client process.
Server CPU per operation comes from this process's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PING = b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n"
BROKER = os.environ.get("MAAGW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass(frozen=True)
class Job:
    mode: str  # "connect" or "keepalive"
    port: int
    ca: str
    cert: str
    key: str
    seconds: float
    threads: int


def _context(job: Job) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=job.ca)
    ctx.load_cert_chain(job.cert, job.key)
    return ctx


def _read_response(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def _dial(port: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port))
    # as aiohttp's client does: without it the request after the client's Finished waits
    # for the server's delayed ACK (the server sends nothing after the handshake)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


def _connect_loop(job: Job, ctx: ssl.SSLContext, deadline: float, counts: list[int]) -> None:
    done = 0
    while time.monotonic() < deadline:
        with (
            _dial(job.port) as raw,
            ctx.wrap_socket(raw, server_hostname="gw.xb.test") as tls,
        ):
            tls.sendall(PING)
            if not _read_response(tls).startswith(b"HTTP/1.1 204"):
                raise RuntimeError("the gateway did not accept the connection")
        done += 1
    counts.append(done)


def _keepalive_loop(job: Job, ctx: ssl.SSLContext, deadline: float, counts: list[int]) -> None:
    done = 0
    with (
        _dial(job.port) as raw,
        ctx.wrap_socket(raw, server_hostname="gw.xb.test") as tls,
    ):
        while time.monotonic() < deadline:
            tls.sendall(PING)
            if not _read_response(tls).startswith(b"HTTP/1.1 204"):
                raise RuntimeError("the gateway refused a request")
            done += 1
    counts.append(done)


def load_generator(job: Job, results: mp.Queue[int]) -> None:
    """One client process: ``job.threads`` threads doing ``job.mode`` until the deadline."""
    ctx = _context(job)
    counts: list[int] = []
    deadline = time.monotonic() + job.seconds
    target = _connect_loop if job.mode == "connect" else _keepalive_loop
    threads = [
        threading.Thread(target=target, args=(job, ctx, deadline, counts))
        for _ in range(job.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(sum(counts))


async def run_phase(job: Job, clients: int) -> tuple[float, float]:
    """(operations per second, server CPU milliseconds per operation) of one phase."""
    spawn = mp.get_context("spawn")
    results: mp.Queue[int] = spawn.Queue()
    procs = [spawn.Process(target=load_generator, args=(job, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    # the client processes take a moment to import; measure only while they run
    await asyncio.sleep(0.8)
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.to_thread(lambda: [p.join() for p in procs])
    cpu1, t1 = time.process_time(), time.monotonic()
    total = sum(results.get() for _ in procs)
    elapsed = max(t1 - t0, 1e-9)
    covered = min(1.0, elapsed / job.seconds)
    rate = total / job.seconds
    return rate, (cpu1 - cpu0) * 1000 / max(1.0, total * covered)


async def main(seconds: float, clients: int, threads: int) -> None:
    from gateway.config.files import load_settings
    from gateway.demo import provision
    from gateway.relay.topology import Names
    from gateway.service import logging as logsetup
    from gateway.service.gateway import Gateway
    from maagw_testing.broker import delete_topology, unique_prefix

    logsetup.configure("console", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="maagw-bench-tls-"))
    prefix = unique_prefix("bench")
    try:
        prov = provision(root, BROKER, prefixes={"XA": prefix + "xa.", "XB": prefix + "xb."})
        settings = load_settings(prov["XB"].config)
        xb = Gateway(settings)
        await xb.start()
        assert xb.partner_port is not None
        xa = root / "XA" / "certs"
        base = Job(
            "connect",
            xb.partner_port,
            str(settings.tls.ca),
            str(xa / "tls-client.pem"),
            str(xa / "tls-client.key"),
            seconds,
            threads,
        )
        try:
            conn_rate, conn_cpu = await run_phase(base, clients)
            keep = Job("keepalive", *list(base.__dict__.values())[1:])
            req_rate, req_cpu = await run_phase(keep, clients)
        finally:
            await xb.stop()
            await delete_topology(BROKER, Names(settings.broker.prefix), list(settings.partners))
        print(f"cpus={os.cpu_count()} clients={clients} threads={threads} seconds={seconds}")
        print(
            f"new mTLS connections accepted: {conn_rate:8.0f}/s  "
            f"(server CPU {conn_cpu:.2f} ms/connection; target >= 500/s)"
        )
        print(
            f"keep-alive requests:           {req_rate:8.0f}/s  "
            f"(server CPU {req_cpu * 1000:.0f} us/request; target >= 5000/s)"
        )
        refused = sum(xb.handshake_failures.values()) + xb.auth_refusals.total()
        print(f"refused during the run: {refused}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per load generator")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.clients, args.threads))
