"""Tests for gateway/audit.py (and its audit_chain / audit_store parts), on SQLite and PostgreSQL.

Every test that takes ``audit_url`` runs once per backend; the PostgreSQL run skips when no
server is reachable (and fails instead when CI=true or MAAGW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.audit import log as audit_log
from gateway.audit.backend import SearchFilter
from gateway.audit.chain import (
    ENTRY_FIELDS,
    GENESIS,
    AuditEvent,
    canonical_entry,
    canonical_json,
    chain_hash,
    checkpoint_bytes,
    evidence_digest,
)
from gateway.audit.export import verify_bundle
from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from maagw_testing.audit import (
    EcSigner,
)

# ---------------------------------------------------------------------------- fixtures


class Raw:
    """Direct SQL on the store, as an attacker with database access would use it.

    (noqa S608 in this file: SQL built from constant column names; values are parameters.)
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith("postgresql://")

    async def _pg(self) -> Any:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        return await asyncpg.connect(self.url)

    @staticmethod
    def _dollar(sql: str) -> str:
        n = 0
        out = []
        for ch in sql:
            if ch == "?":
                n += 1
                out.append(f"${n}")
            else:
                out.append(ch)
        return "".join(out)

    async def execute(self, sql: str, *args: Any) -> None:
        if self.pg:
            con = await self._pg()
            try:
                await con.execute(self._dollar(sql), *args)
            finally:
                await con.close()
        else:
            conn = sqlite3.connect(self.url.removeprefix("sqlite://"), isolation_level=None)
            try:
                conn.execute(sql, args)
            finally:
                conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.pg:
            con = await self._pg()
            try:
                return [tuple(r) for r in await con.fetch(self._dollar(sql), *args)]
            finally:
                await con.close()
        conn = sqlite3.connect(self.url.removeprefix("sqlite://"))
        try:
            return [tuple(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    async def unlock(self) -> None:
        """Remove the append-only triggers (the first thing an attacker does)."""
        if self.pg:
            await self.execute("DROP TRIGGER audit_entries_append_only ON audit_entries")
        else:
            await self.execute("DROP TRIGGER audit_entries_no_update")
            await self.execute("DROP TRIGGER audit_entries_no_delete")


def ev(i: int, **kw: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "event": "received",
        "direction": "inbound",
        "partner": "XB",
        "agreement": "XA-XB-MAA",
        "message_type": "maa-request",
        "message_id": f"msg-{i}",
        "outcome": "ok",
        "details": {"n": i},
    }
    fields.update(kw)
    return AuditEvent(**fields)


async def filled(
    url: str, checkpoint_signer: EcSigner | None, n: int = 35, *, chunk: int = 10, every: int = 10
) -> None:
    """A log of ``n`` entries appended ``chunk`` at a time (a checkpoint per ``every``)."""
    log = await AuditLog.open(
        url, gateway_id="XA", checkpoint_signer=checkpoint_signer, checkpoint_every=every
    )
    for start in range(1, n + 1, chunk):
        await log.append_many([ev(i) for i in range(start, min(n, start + chunk - 1) + 1)])
    await log.close()


async def verify(url: str, **kw: Any) -> Any:
    log = await AuditLog.open(url, gateway_id="XA", create=False)
    try:
        return await log.verify(**kw)
    finally:
        await log.close()


# ------------------------------------------------------------------ canonical bytes

_text = st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=20))
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    seq=st.integers(1, 2**53 - 1),
    strings=st.lists(_text, min_size=15, max_size=15),
    details=st.dictionaries(st.text(max_size=8), _json_value, max_size=4),
)
def test_canonical_entry_is_sorted_compact_json(
    seq: int, strings: list[str | None], details: dict[str, Any]
) -> None:
    """The hand-written canonical form equals json.dumps of the entry object with sorted keys."""
    names = [f for f in ENTRY_FIELDS if f not in ("seq", "details")]
    obj: dict[str, Any] = dict(zip(names, strings, strict=True))
    obj["event"] = obj["event"] or "received"
    obj["gateway"] = obj["gateway"] or "XA"
    obj["time"] = obj["time"] or "2024-01-01T00:00:00.000000Z"
    obj["seq"] = seq
    obj["details"] = details
    row = [
        obj[c]
        for c in (
            "seq",
            "time",
            "gateway",
            "event",
            "direction",
            "partner",
            "agreement",
            "message_type",
            "message_id",
            "correlation_id",
            "envelope_digest",
            "receipt_digest",
            "outcome",
            "code",
            "reason",
            "actor",
        )
    ]
    expected = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_entry(*row, canonical_json(details)) == expected.encode()


@pytest.mark.parametrize(
    "details",
    [{"latency": 1.5}, {"big": 2**60}, {1: "x"}, {"b": b"bytes"}, {"nested": [{"f": 0.1}]}],
)
def test_details_refuse_values_tools_disagree_on(details: dict[Any, Any]) -> None:
    """Floats, huge integers, non-string keys and non-JSON values are refused at construction."""
    with pytest.raises(ValueError):
        AuditEvent("received", details=details)


def test_chain_hash_is_sha256_of_prev_hex_then_bytes() -> None:
    """The chain hash is SHA-256 over the previous hash's 64 hex digits followed by the entry."""
    import hashlib

    body = b'{"x":1}'
    assert chain_hash(GENESIS, body) == hashlib.sha256(GENESIS.encode() + body).hexdigest()


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
    assert (await verify(audit_url)).ok


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
    assert (await verify(audit_url)).ok


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
    report = await verify(audit_url)
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


async def test_untouched_log_verifies(audit_url: str, checkpoint_signer: EcSigner) -> None:
    """An untouched log with checkpoints verifies with no problem and the trusted certificate."""
    await filled(audit_url, checkpoint_signer)
    report = await verify(audit_url, trusted_certs=[checkpoint_signer.cert])
    assert report.ok, report.lines()
    assert (report.entries, report.last_checkpoint_seq, report.unanchored) == (35, 35, 0)


async def test_parallel_verify_reports_like_sequential(
    audit_url: str, checkpoint_signer: EcSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify split over worker processes gives the same report as one sequential pass."""
    monkeypatch.setattr(audit_log, "MIN_SEGMENT", 1)
    await filled(audit_url, checkpoint_signer, n=40)
    await filled(audit_url, None, n=3, chunk=3)
    seen: list[int] = []
    parallel = await verify(audit_url, workers=3, progress=lambda done, total: seen.append(done))
    sequential = await verify(audit_url, workers=1)
    assert parallel == sequential and parallel.ok
    assert seen[-1] == 43 and len(seen) > 1


async def test_verify_says_entries_after_last_checkpoint_are_chain_checked_only(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """Entries appended without a signer after the last checkpoint are reported as unanchored."""
    await filled(audit_url, checkpoint_signer, n=20)
    await filled(audit_url, None, n=4, chunk=4)
    report = await verify(audit_url)
    assert report.ok and report.unanchored == 4
    assert any("only checked against the chain" in line for line in report.lines())


async def test_checkpoint_by_untrusted_signer_is_a_fault(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """A validly signed checkpoint from a certificate that is not trusted is a fault."""
    await filled(audit_url, checkpoint_signer, n=10)
    report = await verify(audit_url, trusted_certs=[EcSigner.generate().cert])
    assert not report.ok and report.problems[0].kind == "checkpoint_untrusted"


# -------------------------------------------------------------------------- tampering


async def _edit_field(raw: Raw) -> None:
    await raw.execute("UPDATE audit_entries SET partner = 'XZ' WHERE seq = 12")


async def _edit_details(raw: Raw) -> None:
    await raw.execute("UPDATE audit_entries SET details = '{\"n\":999}' WHERE seq = 7")


async def _delete_entry(raw: Raw) -> None:
    await raw.execute("DELETE FROM audit_entries WHERE seq = 15")


async def _swap_entries(raw: Raw) -> None:
    cols = (
        "time, gateway, event, direction, partner, agreement, message_type, message_id, "
        "correlation_id, envelope_digest, receipt_digest, outcome, code, reason, actor, "
        "details, prev_hash, hash"
    )
    five, six = await raw.fetch(
        f"SELECT seq, {cols} FROM audit_entries WHERE seq IN (5, 6) ORDER BY seq"  # noqa: S608
    )
    await raw.execute("DELETE FROM audit_entries WHERE seq IN (5, 6)")
    marks = ", ".join("?" * 19)
    await raw.execute(f"INSERT INTO audit_entries (seq, {cols}) VALUES ({marks})", 5, *six[1:])  # noqa: S608
    await raw.execute(f"INSERT INTO audit_entries (seq, {cols}) VALUES ({marks})", 6, *five[1:])  # noqa: S608


async def _rechain_from(raw: Raw) -> None:
    """Alter entry 13 and recompute every later hash: only a checkpoint can tell."""
    rows = await raw.fetch(
        "SELECT seq, time, gateway, event, direction, partner, agreement, message_type, "
        "message_id, correlation_id, envelope_digest, receipt_digest, outcome, code, reason, "
        "actor, details, prev_hash, hash FROM audit_entries WHERE seq >= 12 ORDER BY seq"
    )
    prev = rows[0][18]
    for row in rows[1:]:
        fields = list(row[:17])
        if fields[0] == 13:
            fields[12] = "refused"
        h = chain_hash(prev, canonical_entry(*fields))
        await raw.execute(
            "UPDATE audit_entries SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            fields[12],
            prev,
            h,
            fields[0],
        )
        prev = h


async def _truncate_covered(raw: Raw) -> None:
    await raw.execute("DELETE FROM audit_entries WHERE seq > 27")


async def _replace_signature(raw: Raw) -> None:
    other = EcSigner.generate()
    (data,) = (await raw.fetch("SELECT signed_bytes FROM audit_checkpoints WHERE seq = 20"))[0]
    await raw.execute(
        "UPDATE audit_checkpoints SET signature = ? WHERE seq = 20",
        other.sign_detached_bytes(bytes(data)),
    )


async def _replace_signed_head(raw: Raw) -> None:
    await raw.execute("UPDATE audit_checkpoints SET head_hash = ? WHERE seq = 30", "ab" * 32)


@pytest.mark.parametrize(
    ("tamper", "first_bad", "kind"),
    [
        (_edit_field, 12, "hash"),
        (_edit_details, 7, "hash"),
        (_delete_entry, 15, "missing"),
        (_swap_entries, 5, "prev_hash"),
        (_rechain_from, 11, "checkpoint_mismatch"),
        (_truncate_covered, 28, "truncated"),
        (_replace_signature, 20, "checkpoint_signature"),
        (_replace_signed_head, 30, "checkpoint_bytes"),
    ],
    ids=[
        "edit-field",
        "edit-details",
        "delete",
        "swap",
        "rechain",
        "truncate",
        "signature",
        "signed-head",
    ],
)
@pytest.mark.parametrize("workers", [1, 3], ids=["sequential", "3-workers"])
async def test_verify_names_first_bad_seq(
    audit_url: str,
    checkpoint_signer: EcSigner,
    tamper: Any,
    first_bad: int,
    kind: str,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each kind of tampering is detected and verify names the first bad sequence number.

    With workers, segments of 3 entries put segment boundaries beside every tampered entry.
    """
    monkeypatch.setattr(audit_log, "MIN_SEGMENT", 1)
    await filled(audit_url, checkpoint_signer)
    raw = Raw(audit_url)
    await raw.unlock()
    await tamper(raw)
    report = await verify(audit_url, workers=workers)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.lines()
    assert report.problems[0].kind == kind, report.lines()


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
    assert (await verify(audit_url)).ok


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


# ------------------------------------------------------------------------------ export


def _openssl_verify(cp_dir: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(cp_dir / f"{name}.pub.pem"),
            "-signature",
            str(cp_dir / f"{name}.der"),
            str(cp_dir / f"{name}.bin"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


async def _export(url: str, out: Path, start: int | None = None, end: int | None = None) -> Any:
    log = await AuditLog.open(url, gateway_id="XA", create=False)
    try:
        return await log.export(out, start, end)
    finally:
        await log.close()


async def test_export_verifies_offline_and_with_openssl(
    audit_url: str, checkpoint_signer: EcSigner, tmp_path: Path
) -> None:
    """An exported bundle verifies without the database and openssl accepts every checkpoint."""
    await filled(audit_url, checkpoint_signer)
    out = tmp_path / "bundle"
    manifest = await _export(audit_url, out)
    assert manifest["entries"] == 35 and len(manifest["checkpoints"]) == 4
    report = verify_bundle(out, trusted_certs=[checkpoint_signer.cert])
    assert report.ok, report.lines()
    for name in manifest["checkpoints"]:
        result = _openssl_verify(out / "checkpoints", name)
        assert result.returncode == 0 and "Verified OK" in result.stdout, result.stderr
        assert f"checkpoints/{name}.bin" in (out / "VERIFY.txt").read_text()


async def test_verify_txt_python_recipe_checks_the_chain(
    audit_url: str, checkpoint_signer: EcSigner, tmp_path: Path
) -> None:
    """The Python recipe in VERIFY.txt recomputes the chain of an exported bundle."""
    await filled(audit_url, checkpoint_signer, n=12)
    out = tmp_path / "bundle"
    await _export(audit_url, out)
    text = (out / "VERIFY.txt").read_text()
    script = "\n".join(
        line[5:] for line in text.split("python3 - <<'EOF'\n")[1].split("     EOF")[0].splitlines()
    )
    result = await asyncio.to_thread(
        subprocess.run,
        ["python3", "-c", script],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "chain OK" in result.stdout, result.stderr


async def test_tampered_bundle_is_detected(
    audit_url: str, checkpoint_signer: EcSigner, tmp_path: Path
) -> None:
    """Editing a line of an exported bundle or a signed checkpoint file fails offline verify."""
    await filled(audit_url, checkpoint_signer, n=20)
    out = tmp_path / "bundle"
    manifest = await _export(audit_url, out)
    lines = (out / "entries.jsonl").read_text().splitlines(keepends=True)
    entry = json.loads(lines[8])
    entry["partner"] = "XZ"
    lines[8] = json.dumps(entry) + "\n"
    (out / "entries.jsonl").write_text("".join(lines))
    report = verify_bundle(out)
    assert not report.ok and report.first_bad_seq == 9
    cp = out / "checkpoints" / f"{manifest['checkpoints'][0]}.bin"
    cp.write_bytes(cp.read_bytes().replace(b'"seq":10', b'"seq":11'))
    assert _openssl_verify(out / "checkpoints", manifest["checkpoints"][0]).returncode != 0


@pytest.mark.parametrize(("start", "end", "count"), [(11, 30, 20), (5, 17, 13), (30, 99, 6)])
async def test_partial_export_verifies(
    audit_url: str, checkpoint_signer: EcSigner, tmp_path: Path, start: int, end: int, count: int
) -> None:
    """A bundle of a seq range verifies offline, anchored by the checkpoints inside it."""
    await filled(audit_url, checkpoint_signer)
    out = tmp_path / "bundle"
    manifest = await _export(audit_url, out, start, end)
    assert manifest["entries"] == count
    report = verify_bundle(out)
    assert report.ok, report.lines()
    assert report.first_seq == start


async def test_export_refuses_a_non_empty_directory(audit_url: str, tmp_path: Path) -> None:
    """Export never mixes a new bundle into an existing directory."""
    await filled(audit_url, None, n=2)
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(AuditError):
        await _export(audit_url, tmp_path)


def test_sqlite_missing_file_is_not_created(tmp_path: Path) -> None:
    """Opening with create=False refuses a missing SQLite file instead of creating one."""

    async def go() -> None:
        with pytest.raises(AuditError) as info:
            await AuditLog.open(str(tmp_path / "none.db"), gateway_id="XA", create=False)
        assert info.value.code == "AUDIT_NOT_FOUND"

    asyncio.run(go())
    assert not (tmp_path / "none.db").exists()
