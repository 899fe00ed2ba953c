"""Leader loss: two instances of one administration share PostgreSQL; when the leader is
killed, the other signs the next audit checkpoint within seconds (issue 14)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.relay.topology import Names
from gateway.service.listeners import free_port
from maagw_testing.audit import reset_audit_tables
from maagw_testing.broker import (
    RABBITMQ_URL,
    delete_topology,
    provision_pair,
    start_gateway_process,
)

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


async def checkpoints(url: str) -> list[int]:
    log = await AuditLog.open(url, gateway_id="XB", create=False)
    try:
        return [cp.seq for cp in await log.checkpoints()]
    finally:
        await log.close()


async def append_one(url: str) -> int:
    """Append one entry as another writer of the log would; returns its sequence number."""
    log = await AuditLog.open(url, gateway_id="XB", create=False)
    try:
        return await log.append(AuditEvent(event="operator_action", outcome="ok", actor="test"))
    finally:
        await log.close()


def took_the_lead(log_path: Path) -> bool:
    return b'"leadership_taken"' in log_path.read_bytes()


async def test_when_the_leader_is_killed_the_other_instance_signs_the_next_checkpoint(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = provision_pair(tmp_path / "pair", tag="leader")
    xb = settings["XB"]
    await reset_audit_tables(pg_url)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for n in range(2):
            monkeypatch.setenv("MAAGW_AUDIT_URL", pg_url)
            monkeypatch.setenv("MAAGW_PARTNER_API_PORT", str(free_port()))
            monkeypatch.setenv("MAAGW_ADMIN_PORT", str(free_port()))
            monkeypatch.setenv("MAAGW_STATE_DIR", str(tmp_path / f"xb{n}"))
            logs.append(tmp_path / f"xb{n}.log")
            procs.append(start_gateway_process(xb.path, logs[-1]))
        deadline = time.monotonic() + 10
        while not any(took_the_lead(p) for p in logs):
            assert time.monotonic() < deadline, "no instance took the lead"
            await asyncio.sleep(0.1)
        [leader] = [n for n, p in enumerate(logs) if took_the_lead(p)]
        other = 1 - leader
        # a new leader signs what is unsigned at once: the leader's first checkpoint
        while not await checkpoints(pg_url):
            assert time.monotonic() < deadline, "the leader signed no checkpoint"
            await asyncio.sleep(0.1)
        signed = max(await checkpoints(pg_url))
        # traffic goes on: an entry the leader will not sign before its minute is up
        unsigned = await append_one(pg_url)
        assert unsigned > signed

        os.kill(procs[leader].pid, signal.SIGKILL)
        procs[leader].wait(5)
        killed_at = time.monotonic()
        while max(await checkpoints(pg_url)) < unsigned:
            assert time.monotonic() - killed_at < 10, "no checkpoint within 10 s"
            await asyncio.sleep(0.2)
        took = time.monotonic() - killed_at
        assert took_the_lead(logs[other])
        assert procs[other].poll() is None
        print(f"checkpoint signed by the other instance {took:.1f} s after the kill")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await delete_topology(RABBITMQ_URL, Names(xb.broker.prefix), list(xb.partners))
