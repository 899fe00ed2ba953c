"""Test helpers shared by the test suite and the benchmarks (not used by the gateway).

- ``GatewayPair``: two real gateways (XA, XB) on loopback with generated
  certificates and a unique broker prefix, and their back offices.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.contract import AmqpHeader
from gateway.relay import broker
from gateway.relay.back_office import BackOffice
from gateway.relay.topology import Names

RABBITMQ_URL = os.environ.get("MAAGW_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique_prefix(tag: str = "t") -> str:
    """A broker name prefix no other test uses."""
    return f"test-{tag}-{uuid.uuid4().hex[:8]}."


async def delete_topology(url: str, names: Names, partners: Sequence[str]) -> None:
    """Delete every exchange and queue of a prefix (test clean-up)."""
    await broker.delete_topology(url, names, partners)


async def publish_many(
    office: BackOffice, partner: str, body: bytes, n: int, tag: str
) -> list[str]:
    """Publish ``n`` copies of ``body`` for ``partner``, each with a new message id."""
    ids = [f"{tag}-{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    for mid in ids:
        await office.send(partner, body, message_id=mid)
    return ids


async def collect(office: BackOffice, expected: set[str], timeout: float) -> list[Any]:
    """Consume the office's inbound queue until every expected id arrived (and 2 s more)."""
    queue = await office.channel.get_queue(office.settings.name_of("maagw.inbound"))
    got: list[Any] = []
    seen: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet_until: float | None = None
    while loop.time() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            if seen >= expected:
                quiet_until = quiet_until or loop.time() + 2.0
                if loop.time() > quiet_until:
                    break
            await asyncio.sleep(0.05)
            continue
        got.append(message)
        seen.add(str(message.message_id))
    return got


def account(got: list[Any], expected: set[str]) -> tuple[set[str], dict[str, int], list[Any]]:
    """(ids lost, ids that arrived more than once with their counts, those copies)."""
    counts = collections.Counter(str(m.message_id) for m in got)
    lost = expected - set(counts)
    dups = {mid: c for mid, c in counts.items() if c > 1}
    copies = [m for m in got if str(m.message_id) in dups]
    return lost, dups, copies


def unmarked_duplicates(got: list[Any]) -> dict[str, int]:
    """Ids that arrived more often than once plus their copies marked as possible duplicates."""
    counts = collections.Counter(str(m.message_id) for m in got)
    marked = collections.Counter(
        str(m.message_id) for m in got if (m.headers or {}).get(AmqpHeader.POSSIBLE_DUPLICATE)
    )
    return {mid: c - 1 - marked[mid] for mid, c in counts.items() if c - 1 > marked[mid]}


def provision_pair(root: Path, *, tag: str = "t") -> dict[str, Settings]:
    """Certificates and configuration for XA and XB with unique broker prefixes."""
    from gateway.demo import provision

    base = unique_prefix(tag)
    prov = provision(
        root, RABBITMQ_URL, prefixes={"XA": base + "xa.", "XB": base + "xb."}, extra={}
    )
    return {gid: load_settings(p.config) for gid, p in prov.items()}


def start_gateway_process(config: Path, log_path: Path, *extra: str) -> Any:
    """Run ``maagw serve --config`` as a child process; returns the Popen once it is up."""
    import subprocess
    import sys
    import urllib.request

    settings = load_settings(config)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-format",
            "json",
            "serve",
            "--config",
            str(config),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{settings.admin.host}:{settings.admin.port}/healthz"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway did not come up in 30 s; see {log_path}")


def close_broker_connections(name_contains: str) -> int:
    """Force-close the broker connections whose client name contains ``name_contains``."""
    import subprocess

    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    closed = 0
    for line in out.splitlines():
        if name_contains in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "test fault injection"],
                capture_output=True,
                check=False,
                timeout=30,
            )
            closed += 1
    return closed
