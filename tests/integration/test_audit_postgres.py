"""PostgreSQL-only behaviour of gateway/audit.py (the shared suite in tests/gateway/audit/
runs every other test on PostgreSQL too): several gateways writing one chain, concurrent migration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from maagw_testing.audit import (
    EcSigner,
    reset_audit_tables,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def empty_pg(pg_url: str) -> AsyncIterator[str]:
    """The session's scratch database with no audit schema in it."""
    await reset_audit_tables(pg_url)
    yield pg_url


async def test_two_gateways_share_one_linear_chain(empty_pg: str) -> None:
    """Two gateway instances appending at once to one database build one chain that verifies."""
    signer = EcSigner.generate()
    logs = [
        await AuditLog.open(empty_pg, gateway_id=gid, checkpoint_signer=signer, checkpoint_every=50)
        for gid in ("XA", "XA-2")
    ]
    try:

        async def burst(log: AuditLog, n: int) -> list[int]:
            return list(
                await asyncio.gather(
                    *(log.append(AuditEvent("received", message_id=f"{n}-{i}")) for i in range(200))
                )
            )

        results = await asyncio.gather(*(burst(log, n) for n in range(3) for log in logs))
    finally:
        for log in logs:
            await log.close()
    seqs = [s for r in results for s in r]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    check = await AuditLog.open(empty_pg, gateway_id="XA")
    try:
        report = await check.verify(trusted_certs=[signer.cert])
        gateways = {e.gateway for e in await check.search(limit=10_000)}
    finally:
        await check.close()
    assert report.ok, report.lines()
    assert gateways == {"XA", "XA-2"}


async def test_concurrent_opens_migrate_once(empty_pg: str) -> None:
    """Gateways starting together on an empty database apply each migration exactly once."""
    logs = await asyncio.gather(*(AuditLog.open(empty_pg, gateway_id="XA") for _ in range(4)))
    for log in logs:
        await log.close()
    con = await asyncpg.connect(empty_pg)
    try:
        versions = [
            r[0] for r in await con.fetch("SELECT version FROM audit_schema_version ORDER BY 1")
        ]
    finally:
        await con.close()
    assert versions == [1, 2]


async def test_unreachable_server_is_an_audit_error() -> None:
    """An unreachable PostgreSQL is reported as AuditError AUDIT_UNAVAILABLE, not a crash."""
    with pytest.raises(AuditError) as info:
        await AuditLog.open("postgresql://postgres@127.0.0.1:1/none", gateway_id="XA")
    assert info.value.code == "AUDIT_UNAVAILABLE"
