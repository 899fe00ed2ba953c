"""Crash test for gateway/audit.py: `kill -9` mid-burst loses no acknowledged entry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.audit.log import AuditLog

#: the child: many concurrent appenders, each printing a seq once append() returned it
CHILD = r"""
import asyncio, sys
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from maagw_testing.audit import EcSigner

async def appender(log, n):
    i = 0
    while True:
        i += 1
        seq = await log.append(AuditEvent("received", partner="XB", message_id=f"{n}-{i}",
                                          details={"appender": n, "i": i}))
        sys.stdout.write(f"{seq}\n")
        sys.stdout.flush()

async def main():
    log = await AuditLog.open(sys.argv[1], gateway_id="XA",
                              checkpoint_signer=EcSigner.generate(), checkpoint_every=300)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(appender(log, n) for n in range(64)))

asyncio.run(main())
"""

ACKS_BEFORE_KILL = 4000


def burst_then_kill(url: str) -> set[int]:
    """Run the child until it acknowledged enough appends, SIGKILL it; return the acked seqs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert child.stdout is not None
    acked: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        for line in child.stdout:
            if line.strip().isdigit():
                acked.add(int(line))
            if len(acked) >= ACKS_BEFORE_KILL or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
        # what the child printed before it died was acknowledged too
        acked.update(int(line) for line in child.stdout if line.strip().isdigit())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return acked


def test_kill_9_during_burst_keeps_every_acknowledged_entry(audit_url: str) -> None:
    """After kill -9 mid-burst the chain verifies and every seq the child saw acked is present."""
    acked = burst_then_kill(audit_url)
    assert len(acked) >= ACKS_BEFORE_KILL

    async def check() -> None:
        log = await AuditLog.open(audit_url, gateway_id="XA", create=False)
        try:
            report = await log.verify()
            head, _ = await log.head()
        finally:
            await log.close()
        assert report.ok, report.lines()
        assert report.entries == head and max(acked) <= head
        assert acked <= set(range(1, head + 1))

    asyncio.run(check())
