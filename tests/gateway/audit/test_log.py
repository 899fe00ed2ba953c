"""Tests for gateway/audit/log.py: appending, checkpoints, evidence, search, on SQLite and PostgreSQL.

Every test that takes ``audit_url`` runs once per backend; the PostgreSQL run skips when no
server is reachable (and fails instead when CI=true or MAAGW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.audit.backend import SearchFilter
from gateway.audit.chain import (
    checkpoint_bytes,
    evidence_digest,
)
from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from maagw_testing.audit import EcSigner, Raw, ev, filled, verify_log

# ------------------------------------------------------------------------ appending


async def test_append_returns_seq_only_once_committed(audit_url: str) -> None:
    """When append returns, another connection already sees the entry with that seq."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        seq = await log.append(ev(1))
        rows = await Raw(audit_url).fetch(
            "SELECT seq, message_id FROM audit_entries WHERE seq = ?", seq
        )
        assert rows == [(seq, "msg-1")]
    finally:
        await log.close()


async def test_concurrent_appends_are_group_committed(audit_url: str) -> None:
    """Hundreds of concurrent appends get distinct consecutive seqs in few transactions."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    calls = 0
    real = log._store.write_batch

    async def counting(*args: Any) -> tuple[int, str]:
        nonlocal calls
        calls += 1
        return await real(*args)

    log._store.write_batch = counting  # type: ignore[method-assign]
    try:
        seqs = await asyncio.gather(*(log.append(ev(i)) for i in range(500)))
    finally:
        await log.close()
    assert sorted(seqs) == list(range(1, 501))
    assert calls < 50
    assert (await verify_log(audit_url)).ok


async def test_append_many_gives_consecutive_seqs(audit_url: str) -> None:
    """append_many returns consecutive seqs in the order of the events given."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        await log.append(ev(0))
        seqs = await log.append_many([ev(i) for i in range(1, 6)])
        found = await log.search(SearchFilter(limit=10))
    finally:
        await log.close()
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert [e.message_id for e in found if e.seq in seqs] == [f"msg-{i}" for i in range(1, 6)]


async def test_failed_write_raises_and_leaves_no_hole(audit_url: str) -> None:
    """Failed writes raise AuditError, are logged at error once per episode, and leave no hole."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    real = log._store.write_batch

    async def failing(*args: Any) -> tuple[int, str]:
        raise AuditError("disk full", code="AUDIT_STORE_FAILED")

    try:
        first = await log.append(ev(1))
        log._store.write_batch = failing  # type: ignore[method-assign]
        with capture_logs() as logs:
            for i in (2, 3, 4):
                with pytest.raises(AuditError) as info:
                    await log.append(ev(i))
                assert info.value.code == "AUDIT_STORE_FAILED"
        assert not log.health.healthy
        # one error line for the whole episode, not one per failed write
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [(e["event"], e["store"]) for e in errors] == [("store_failed", "audit")]
        log._store.write_batch = real  # type: ignore[method-assign]
        log.health._every, log.health._quiet = 0.05, 0.2
        with capture_logs() as logs:
            assert await log.append(ev(5)) == first + 1
            assert log.health.healthy
            for _ in range(100):  # the episode ends after a quiet period
                if log.health._prober is None:
                    break
                await asyncio.sleep(0.05)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["store_recovered"]
    finally:
        await log.close()
    assert (await verify_log(audit_url)).ok


async def test_stopped_writer_fails_waiting_appends(audit_url: str) -> None:
    """If the writer task dies, waiting and later appends raise AuditError instead of hanging."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    never = asyncio.Event()

    async def hanging(*args: Any) -> tuple[int, str]:
        await never.wait()
        raise AssertionError("unreachable")

    log._store.write_batch = hanging  # type: ignore[method-assign]
    try:
        waiting = asyncio.ensure_future(log.append(ev(1)))
        await asyncio.sleep(0.01)
        assert log._writer is not None
        log._writer.cancel()
        with pytest.raises(AuditError) as info:
            await asyncio.wait_for(waiting, 5)
        assert info.value.code == "AUDIT_WRITER_STOPPED"
        with pytest.raises(AuditError):
            await log.append(ev(2))
    finally:
        await log.close()


async def test_append_after_close_is_refused(audit_url: str) -> None:
    """Appending to a closed log raises AuditError AUDIT_CLOSED rather than losing the entry."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    await log.close()
    with pytest.raises(AuditError) as info:
        await log.append(ev(1))
    assert info.value.code == "AUDIT_CLOSED"


async def test_reopen_continues_the_chain(audit_url: str) -> None:
    """A log reopened later appends after its head and the whole chain still verifies."""
    await filled(audit_url, None, n=7)
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        assert await log.append(ev(8)) == 8
    finally:
        await log.close()
    report = await verify_log(audit_url)
    assert report.ok and report.entries == 8


async def test_schema_version_is_recorded_and_newer_refused(audit_url: str) -> None:
    """Opening records the schema version; a database from a newer gateway is refused."""
    await filled(audit_url, None, n=1)
    raw = Raw(audit_url)
    assert await raw.fetch("SELECT version FROM audit_schema_version ORDER BY version") == [
        (1,),
        (2,),
    ]
    await raw.execute("INSERT INTO audit_schema_version VALUES (99, 'later')")
    with pytest.raises(AuditError) as info:
        await AuditLog.open(audit_url, gateway_id="XA")
    assert info.value.code == "AUDIT_SCHEMA_NEWER"


async def test_entries_are_append_only_in_sql(audit_url: str) -> None:
    """The store's triggers refuse UPDATE and DELETE on entries."""
    await filled(audit_url, None, n=2)
    raw = Raw(audit_url)
    for sql in ("UPDATE audit_entries SET partner = 'XZ'", "DELETE FROM audit_entries"):
        with pytest.raises(Exception, match="append-only"):
            await raw.execute(sql)


# ---------------------------------------------------------------------- checkpoints


async def test_checkpoints_every_n_entries_and_at_close(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """A checkpoint is signed after every N entries and a final one on close."""
    await filled(audit_url, checkpoint_signer, n=35, chunk=10, every=10)
    log = await AuditLog.open(audit_url, gateway_id="XA", create=False)
    try:
        cps = await log.checkpoints()
        tail = await log.search(SearchFilter(limit=100))
    finally:
        await log.close()
    assert [cp.seq for cp in cps] == [10, 20, 30, 35]
    by_seq = {e.seq: e.hash for e in tail}
    for cp in cps:
        assert cp.head_hash == by_seq[cp.seq]
        assert cp.signed_bytes == checkpoint_bytes("XA", cp.seq, cp.head_hash, cp.time)


async def test_checkpoint_after_t_seconds(audit_url: str, checkpoint_signer: EcSigner) -> None:
    """With few entries, a checkpoint is still signed once checkpoint_seconds have passed."""
    log = await AuditLog.open(
        audit_url,
        gateway_id="XA",
        checkpoint_signer=checkpoint_signer,
        checkpoint_every=1000,
        checkpoint_seconds=0.2,
    )
    try:
        await log.append(ev(1))
        for _ in range(50):
            await asyncio.sleep(0.05)
            if await log.checkpoints():
                break
        assert [cp.seq for cp in await log.checkpoints()] == [1]
    finally:
        await log.close()


# --------------------------------------------------------------------- evidence


async def test_evidence_is_stored_and_read_back(audit_url: str) -> None:
    """Stored evidence comes back byte for byte under its digest; unknown digests give None."""
    data = b"<Envelope>signed</Envelope>"
    digest = evidence_digest(data)
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        await log.store_evidence(digest, "envelope", data, retention_days=30)
        await log.store_evidence(digest, "envelope", data, retention_days=30)
        assert await log.get_evidence(digest) == data
        assert await log.get_evidence("0" * 64) is None
    finally:
        await log.close()


async def test_evidence_with_wrong_digest_is_refused(audit_url: str) -> None:
    """Evidence whose digest is not the SHA-256 of its bytes is refused."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        with pytest.raises(AuditError) as info:
            await log.store_evidence("ab" * 32, "receipt", b"x", retention_days=1)
        assert info.value.code == "AUDIT_EVIDENCE_DIGEST"
    finally:
        await log.close()


async def test_purge_drops_expired_evidence_and_chain_still_verifies(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """Purge removes only evidence past retention; entries and the chain are untouched."""
    old, new = b"<old/>", b"<new/>"
    log = await AuditLog.open(audit_url, gateway_id="XA", checkpoint_signer=checkpoint_signer)
    try:
        for data, days in ((old, 0), (new, 30)):
            await log.store_evidence(evidence_digest(data), "envelope", data, retention_days=days)
            await log.append(ev(days, envelope_digest=evidence_digest(data), message_id="m1"))
        purged = await log.purge(datetime.now(UTC) + timedelta(days=1))
        assert purged == 1
        assert await log.get_evidence(evidence_digest(old)) is None
        assert await log.get_evidence(evidence_digest(new)) == new
        entries, evidence = await log.timeline("m1")
        assert len(entries) == 2
        assert {(e.digest, e.purged_at is not None) for e in evidence} == {
            (evidence_digest(old), True),
            (evidence_digest(new), False),
        }
    finally:
        await log.close()
    assert (await verify_log(audit_url)).ok


# ---------------------------------------------------------------- search / timeline


@pytest.mark.parametrize(
    ("filters", "expected_ids"),
    [
        ({"partner": "XC"}, ["c1", "c2"]),
        ({"agreement": "XA-XC-AEO"}, ["c2"]),
        ({"message_type": "aeo-status"}, ["c2"]),
        ({"message_id": "b1"}, ["b1"]),
        ({"outcome": "refused"}, ["c1"]),
        ({"partner": "XB", "outcome": "ok"}, ["b1", "b2"]),
        ({}, ["b1", "c1", "b2", "c2"]),
    ],
)
async def test_search_filters(
    audit_url: str, filters: dict[str, str], expected_ids: list[str]
) -> None:
    """Search returns exactly the entries matching every given filter, in seq order."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        await log.append(ev(0, message_id="b1"))
        await log.append(
            ev(0, message_id="c1", partner="XC", outcome="refused", code="POLICY_DENIED")
        )
        await log.append(ev(0, message_id="b2"))
        await log.append(
            ev(0, message_id="c2", partner="XC", agreement="XA-XC-AEO", message_type="aeo-status")
        )
        found = await log.search(**filters)
    finally:
        await log.close()
    assert [e.message_id for e in found] == expected_ids


async def test_search_by_time_range(audit_url: str) -> None:
    """since/until select entries by their log time."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        await log.append(ev(1))
        mid = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await asyncio.sleep(0.01)
        await log.append(ev(2))
        after = await log.search(since=mid)
        before = await log.search(until=mid)
    finally:
        await log.close()
    assert [e.message_id for e in after] == ["msg-2"]
    assert [e.message_id for e in before] == ["msg-1"]


async def test_timeline_follows_correlation_id(audit_url: str) -> None:
    """A message's timeline includes entries that refer to it as correlation id (its receipt)."""
    log = await AuditLog.open(audit_url, gateway_id="XA")
    try:
        await log.append(ev(0, message_id="req-1", event="sent", direction="outbound"))
        await log.append(ev(0, message_id="other"))
        await log.append(ev(0, message_id="rcpt-9", correlation_id="req-1", event="receipt"))
        entries, _ = await log.timeline("req-1")
    finally:
        await log.close()
    assert [(e.event, e.message_id) for e in entries] == [("sent", "req-1"), ("receipt", "rcpt-9")]


async def test_only_the_leader_signs_and_a_new_leader_signs_what_others_appended_at_once(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """Two instances on one log: the follower signs nothing; on taking over it signs the head
    the other instance wrote, without waiting for its own entries or its timer."""
    leader_leads = True
    leader = await AuditLog.open(
        audit_url, gateway_id="XA", checkpoint_signer=checkpoint_signer, checkpoint_every=2
    )
    follower = await AuditLog.open(
        audit_url, gateway_id="XA", checkpoint_signer=checkpoint_signer, checkpoint_every=2
    )
    leader.set_leadership(lambda: leader_leads)
    follower_leads = False
    follower.set_leadership(lambda: follower_leads)
    try:
        await follower.append_many([ev(1), ev(2), ev(3)])
        await leader.append_many([ev(4), ev(5)])
        # by the leader after its own batch; the follower's batch of 3 was due but not signed
        assert await _signed(follower, 1) == [5]
        await asyncio.sleep(0.1)
        assert [cp.seq for cp in await follower.checkpoints()] == [5]
        # the leader is gone, and a third writer (say, a worker without a signer) appends
        leader_leads = False
        await _append(audit_url, ev(6))
        follower_leads = True
        follower.leadership_changed()
        assert await _signed(follower, 2) == [5, 6]
    finally:
        await follower.close()
        await leader.close()
    assert [cp.seq for cp in await _checkpoints(audit_url)] == [5, 6]  # closing signs no more


async def _signed(log: AuditLog, count: int) -> list[int]:
    """The checkpoints' sequence numbers once there are ``count`` (or after a second)."""
    for _ in range(50):
        seqs = [cp.seq for cp in await log.checkpoints()]
        if len(seqs) >= count:
            return seqs
        await asyncio.sleep(0.02)
    return seqs


async def _append(url: str, event: Any) -> None:
    log = await AuditLog.open(url, gateway_id="XA")
    try:
        await log.append(event)
    finally:
        await log.close()


async def _checkpoints(url: str) -> list[Any]:
    log = await AuditLog.open(url, gateway_id="XA")
    try:
        return await log.checkpoints()
    finally:
        await log.close()
