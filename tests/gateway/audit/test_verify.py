"""Tests for gateway/audit/verify.py: verifying the chain and checkpoints, and every kind of tampering.

Every test that takes ``audit_url`` runs once per backend; the PostgreSQL run skips when no
server is reachable (and fails instead when CI=true or MAAGW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.audit import log as audit_log
from gateway.audit.chain import (
    canonical_entry,
    chain_hash,
)
from maagw_testing.audit import EcSigner, Raw, filled, verify_log


async def test_untouched_log_verifies(audit_url: str, checkpoint_signer: EcSigner) -> None:
    """An untouched log with checkpoints verifies with no problem and the trusted certificate."""
    await filled(audit_url, checkpoint_signer)
    report = await verify_log(audit_url, trusted_certs=[checkpoint_signer.cert])
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
    parallel = await verify_log(
        audit_url, workers=3, progress=lambda done, total: seen.append(done)
    )
    sequential = await verify_log(audit_url, workers=1)
    assert parallel == sequential and parallel.ok
    assert seen[-1] == 43 and len(seen) > 1


async def test_verify_says_entries_after_last_checkpoint_are_chain_checked_only(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """Entries appended without a signer after the last checkpoint are reported as unanchored."""
    await filled(audit_url, checkpoint_signer, n=20)
    await filled(audit_url, None, n=4, chunk=4)
    report = await verify_log(audit_url)
    assert report.ok and report.unanchored == 4
    assert any("only checked against the chain" in line for line in report.lines())


async def test_checkpoint_by_untrusted_signer_is_a_fault(
    audit_url: str, checkpoint_signer: EcSigner
) -> None:
    """A validly signed checkpoint from a certificate that is not trusted is a fault."""
    await filled(audit_url, checkpoint_signer, n=10)
    report = await verify_log(audit_url, trusted_certs=[EcSigner.generate().cert])
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
    report = await verify_log(audit_url, workers=workers)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report.lines()
    assert report.problems[0].kind == kind, report.lines()
