"""`maagw serve --workers 2`: two processes per gateway share the partner port, the queues and one audit chain."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from gateway.config.files import load_settings
from gateway.demo import provision
from gateway.relay.back_office import BackOffice
from gateway.relay.topology import Names
from maagw_testing.broker import (
    RABBITMQ_URL,
    delete_topology,
    start_gateway_process,
    unique_prefix,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def two_by_two(tmp_path: Path, rabbitmq: str) -> Any:
    """XA and XB provisioned with a generous rate limit, broker objects removed afterwards."""
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    source = Path(__file__).resolve().parents[2] / "config" / "agreements" / "xa-xb-maa.toml"
    (agreements / "xa-xb-maa.toml").write_text(
        source.read_text().replace("rate_per_minute = 600", "rate_per_minute = 600000")
    )
    base = unique_prefix("workers")
    prov = provision(
        tmp_path / "gw",
        rabbitmq,
        prefixes={"XA": base + "xa.", "XB": base + "xb."},
        agreements_dir=agreements,
        batch_max=8,
    )
    yield prov
    for p in prov.values():
        s = load_settings(p.config)
        asyncio.run(delete_topology(rabbitmq, Names(s.broker.prefix), list(s.partners)))


async def test_two_workers_per_gateway_deliver_everything_once_and_keep_one_chain(
    two_by_two: Any, tmp_path: Path
) -> None:
    """With two workers on each side, 300 messages arrive once each and both audit chains verify."""
    prov = two_by_two
    procs = {}
    for gid in ("XB", "XA"):
        procs[gid] = await asyncio.to_thread(
            start_gateway_process, prov[gid].config, tmp_path / f"{gid}.log", "--workers", "2"
        )
    try:
        for gid, proc in procs.items():
            for _ in range(50):
                if len(_children(proc.pid)) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(_children(proc.pid)) == 2, f"{gid} has not two workers"
        await asyncio.sleep(1.0)  # both workers listening and consuming
        settings = {gid: load_settings(p.config) for gid, p in prov.items()}
        conn = await aio_pika.connect_robust(RABBITMQ_URL)
        try:
            office_a = await BackOffice(settings["XA"], conn).open()
            office_b = await BackOffice(settings["XB"], conn).open()
            ids = [f"w-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(300)]
            for mid in ids:
                await office_a.send("XB", REQUEST, message_id=mid)
            got = await office_b.drain("maagw.inbound", want=300, timeout=90, idle=2.0)
        finally:
            await conn.close()
        counts = collections.Counter(str(m.message_id) for m in got)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for gid, proc in procs.items():
            assert await asyncio.to_thread(proc.wait, 60) == 0, (
                tmp_path / f"{gid}.log"
            ).read_text()[-3000:]
    for p in prov.values():
        verify = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "audit", "verify", "--config", str(p.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
