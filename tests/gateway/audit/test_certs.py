"""Tests for gateway/audit/certs.py: signing certificates recorded in the log, and whom verify trusts."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import pem
from gateway.audit.certs import CERT_RECORDED, record_event
from gateway.audit.chain import AuditEvent
from gateway.audit.export import verify_bundle
from gateway.audit.log import AuditLog
from gateway.audit.verify import VerifyReport
from gateway.ca import authority
from gateway.xml.signature import Signer
from maagw_testing.audit import reset_audit_tables


class Gw:
    """A gateway's CA and signing certificates (tmp files), and a SQLite audit log."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        authority.init_ca("XA Customs Gateway CA", self.ca_dir)
        self.url = url or f"sqlite://{root / 'audit.db'}"

    @property
    def ca(self) -> x509.Certificate:
        return pem.load_cert(self.ca_dir / "ca.pem")

    def signer(
        self, name: str, *, kind: str = "signing", ca_dir: Path | None = None, **kw: Any
    ) -> Signer:
        """Issue a certificate of ``kind`` and return a checkpoint signer with its key."""
        authority.issue(ca_dir or self.ca_dir, kind, name, self.root / "certs", **kw)
        return Signer.from_files(
            self.root / "certs" / f"{name}.key", self.root / "certs" / f"{name}.pem"
        )

    async def run(
        self, signer: Signer, n: int, *, record: bool = True, events: tuple[AuditEvent, ...] = ()
    ) -> None:
        """Open the log with ``signer`` (recording it first), append ``events`` and ``n`` entries, close."""
        log = await AuditLog.open(
            self.url, gateway_id="XA", checkpoint_signer=signer, checkpoint_every=5
        )
        try:
            if record:
                await log.append(record_event(signer.cert, actor="system", source="gateway"))
            for event in events:
                await log.append(event)
            for i in range(n):
                await log.append(
                    AuditEvent("received", partner="XB", message_id=f"m-{i}", outcome="ok")
                )
        finally:
            await log.close()

    async def verify(self, **kw: Any) -> VerifyReport:
        log = await AuditLog.open(self.url, gateway_id="XA", create=False)
        try:
            return await log.verify(**kw)
        finally:
            await log.close()


@pytest.fixture
def gw(tmp_path: Path) -> Gw:
    return Gw(tmp_path)


@pytest.fixture
async def pg_gw(tmp_path: Path, pg_url: str) -> Gw:
    """A Gw whose audit log is the session's scratch PostgreSQL database, emptied first."""
    await reset_audit_tables(pg_url)
    return Gw(tmp_path, pg_url)


def untrusted(report: VerifyReport) -> list[str]:
    return [p.message for p in report.problems if p.kind == "checkpoint_untrusted"]


async def test_checkpoints_of_the_rotated_certificate_verify_with_the_new_one_configured(
    gw: Gw,
) -> None:
    """After a rotation, checkpoints signed by the old (recorded) certificate are trusted beside the new one."""
    old, new = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(old, 12)
    await gw.run(new, 7)
    report = await gw.verify(trusted_certs=[new.cert], trusted_cas=[gw.ca])
    assert report.ok, report.lines()
    assert report.checkpoints == report.valid_checkpoints >= 4
    assert report.last_checkpoint_seq == report.last_seq


@pytest.mark.postgres
async def test_a_rotation_verifies_on_postgresql_too(pg_gw: Gw) -> None:
    """The records are found and trusted the same way in a PostgreSQL log."""
    old, new = pg_gw.signer("signing"), pg_gw.signer("signing-2")
    await pg_gw.run(old, 7)
    await pg_gw.run(new, 7)
    report = await pg_gw.verify(trusted_certs=[new.cert], trusted_cas=[pg_gw.ca])
    assert report.ok, report.lines()
    assert report.valid_checkpoints == report.checkpoints >= 4


async def test_without_the_gateway_ca_the_recorded_certificate_is_not_enough(gw: Gw) -> None:
    """A recorded certificate is trusted only when it can be checked against the gateway's CA."""
    old, new = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(old, 6)
    await gw.run(new, 6)
    report = await gw.verify(trusted_certs=[new.cert])
    assert not report.ok
    assert all("no trusted CA" in m for m in untrusted(report)) and untrusted(report)


async def test_a_certificate_of_another_ca_recorded_by_a_database_writer_is_not_trusted(
    gw: Gw, tmp_path: Path
) -> None:
    """Someone appending a record of his own certificate and a checkpoint signed with it is caught."""
    own = gw.signer("signing")
    await gw.run(own, 6)
    authority.init_ca("Mallory CA", tmp_path / "mallory-ca")
    mallory = gw.signer("mallory", ca_dir=tmp_path / "mallory-ca")
    await gw.run(mallory, 3)  # records mallory's certificate, then signs a checkpoint with it
    report = await gw.verify(trusted_certs=[own.cert], trusted_cas=[gw.ca])
    assert not report.ok
    [why] = untrusted(report)
    assert "not a signing certificate issued by the gateway's CA" in why


async def test_a_tls_certificate_of_the_own_ca_may_not_sign_checkpoints(gw: Gw) -> None:
    """Only the signing kind counts: a recorded TLS client certificate of the own CA is refused."""
    own, tls = gw.signer("signing"), gw.signer("tls-client", kind="tls-client")
    await gw.run(own, 6)
    await gw.run(tls, 3)
    report = await gw.verify(trusted_certs=[own.cert], trusted_cas=[gw.ca])
    assert not report.ok and len(untrusted(report)) == 1


async def test_a_record_after_the_checkpoint_does_not_vouch_for_it(gw: Gw) -> None:
    """A certificate recorded only after a checkpoint it signed does not make that checkpoint trusted."""
    first, late = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(first, 6)
    await gw.run(late, 6, record=False)
    await gw.run(late, 1)  # recorded now, after the checkpoints it signed
    report = await gw.verify(trusted_certs=[first.cert], trusted_cas=[gw.ca])
    assert not report.ok
    assert untrusted(report) and all("after this checkpoint" in m for m in untrusted(report))
    assert report.valid_checkpoints < report.checkpoints


async def test_checkpoints_from_before_certificates_were_recorded_are_trusted_once_recorded(
    gw: Gw,
) -> None:
    """A log begun before recording existed: its early checkpoints count once their certificate is recorded."""
    old, new = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(old, 11, record=False)
    await gw.run(old, 2)  # the first start of a version that records
    await gw.run(new, 4)
    report = await gw.verify(trusted_certs=[new.cert], trusted_cas=[gw.ca])
    assert report.ok, report.lines()


async def test_a_checkpoint_outside_the_certificates_validity_is_not_trusted(gw: Gw) -> None:
    """A recorded certificate vouches only for checkpoints signed within its validity."""
    current = gw.signer("signing")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = gw.signer("expired", not_before=past, days=2)
    await gw.run(expired, 6)
    await gw.run(current, 2)
    report = await gw.verify(trusted_certs=[current.cert], trusted_cas=[gw.ca])
    assert not report.ok
    assert untrusted(report) and all(
        "outside the certificate's validity" in m for m in untrusted(report)
    )


async def test_swapping_the_certificate_in_a_record_breaks_the_chain(
    gw: Gw, tmp_path: Path
) -> None:
    """Replacing a recorded certificate by another in the database is found as an altered entry."""
    old, new = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(old, 6)
    await gw.run(new, 6)
    other = gw.signer("other")
    conn = sqlite3.connect(gw.url.removeprefix("sqlite://"), isolation_level=None)
    try:
        conn.execute("DROP TRIGGER audit_entries_no_update")
        pem = other.cert.public_bytes(serialization.Encoding.PEM).decode()
        row = conn.execute(
            "SELECT seq, details FROM audit_entries WHERE event = ? ORDER BY seq", (CERT_RECORDED,)
        ).fetchone()
        details = json.loads(row[1])
        details["cert_pem"] = pem
        conn.execute(
            "UPDATE audit_entries SET details = ? WHERE seq = ?",
            (json.dumps(details, sort_keys=True, separators=(",", ":")), row[0]),
        )
    finally:
        conn.close()
    report = await gw.verify(trusted_certs=[new.cert], trusted_cas=[gw.ca])
    assert not report.ok and report.first_bad_seq == row[0]


async def test_a_bundle_trusts_certificates_recorded_inside_it(gw: Gw, tmp_path: Path) -> None:
    """An exported bundle verifies offline across a rotation given the new certificate and the CA."""
    old, new = gw.signer("signing"), gw.signer("signing-2")
    await gw.run(old, 8)
    await gw.run(new, 8)
    log = await AuditLog.open(gw.url, gateway_id="XA", create=False)
    try:
        await log.export(tmp_path / "bundle")
    finally:
        await log.close()
    ok = verify_bundle(tmp_path / "bundle", trusted_certs=[new.cert], trusted_cas=[gw.ca])
    assert ok.ok, ok.lines()
    without_ca = verify_bundle(tmp_path / "bundle", trusted_certs=[new.cert])
    assert not without_ca.ok


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (
            {"checkpoints": 4, "valid_checkpoints": 4, "last_checkpoint_seq": 40},
            "checkpoints: 4 (all valid), last valid at seq 40",
        ),
        (
            {"checkpoints": 4, "valid_checkpoints": 1, "last_checkpoint_seq": 40},
            "checkpoints: 4 (1 valid, 3 not), last valid at seq 40",
        ),
        (
            {"checkpoints": 4, "valid_checkpoints": 0, "last_checkpoint_seq": 0},
            "checkpoints: 4, none valid",
        ),
        ({"checkpoints": 0, "valid_checkpoints": 0, "last_checkpoint_seq": 0}, "checkpoints: none"),
    ],
)
def test_the_summary_line_counts_checkpoints_and_valid_ones(
    fields: dict[str, int], line: str
) -> None:
    """The summary says how many checkpoints there are, how many verify, and the last valid seq."""
    report = VerifyReport(
        entries=40,
        first_seq=1,
        last_seq=40,
        head_hash="0" * 64,
        problems=(),
        problem_count=0,
        **fields,
    )
    assert line in report.lines()
