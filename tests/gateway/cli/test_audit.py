"""Tests for gateway/cli/audit.py: the ``maagw audit`` commands on a SQLite log."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from gateway.audit.chain import AuditEvent, evidence_digest
from gateway.audit.log import AuditLog
from gateway.cli.audit import audit
from maagw_testing.audit import EcSigner

ENVELOPE = b"<Envelope>request</Envelope>"
RECEIPT = b"<Receipt>accepted</Receipt>"


@pytest.fixture
def db(tmp_path: Path, checkpoint_signer: EcSigner) -> str:
    """A SQLite log of one exchange (request, policy decision, receipt) plus filler entries."""
    url = f"sqlite://{tmp_path / 'audit.db'}"

    async def fill() -> None:
        log = await AuditLog.open(
            url, gateway_id="XA", checkpoint_signer=checkpoint_signer, checkpoint_every=10
        )
        await log.store_evidence(evidence_digest(ENVELOPE), "envelope", ENVELOPE, 30)
        await log.store_evidence(evidence_digest(RECEIPT), "receipt", RECEIPT, 30)
        await log.append(
            AuditEvent(
                "received",
                direction="inbound",
                partner="XB",
                agreement="XA-XB-MAA",
                message_type="maa-request",
                message_id="req-1",
                outcome="ok",
                envelope_digest=evidence_digest(ENVELOPE),
            )
        )
        await log.append(
            AuditEvent(
                "policy_decision",
                partner="XB",
                message_id="req-1",
                outcome="ok",
                code="POLICY_ALLOWED",
            )
        )
        for i in range(20):
            await log.append(
                AuditEvent(
                    "received",
                    partner="XC",
                    message_id=f"x-{i}",
                    outcome="refused",
                    code="POLICY_DENIED",
                    reason="no agreement",
                )
            )
        await log.append(
            AuditEvent(
                "receipt",
                direction="outbound",
                partner="XB",
                message_id="rcpt-1",
                correlation_id="req-1",
                receipt_digest=evidence_digest(RECEIPT),
                outcome="ok",
            )
        )
        await log.close()

    asyncio.run(fill())
    return url


def run(*args: str) -> Result:
    return CliRunner().invoke(audit, list(args))


def json_lines(result: Result) -> list[dict[str, Any]]:
    """The JSON objects a --json command printed (log lines may share stdout in tests)."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def cert_file(tmp_path: Path, checkpoint_signer: EcSigner, name: str = "cert.pem") -> str:
    path = tmp_path / name
    path.write_bytes(checkpoint_signer.cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_verify_accepts_an_untouched_log(
    db: str, tmp_path: Path, checkpoint_signer: EcSigner
) -> None:
    """verify exits 0 and says OK on an untouched log signed by the trusted certificate."""
    result = run("verify", "--db", db, "--cert", cert_file(tmp_path, checkpoint_signer))
    assert result.exit_code == 0, result.output
    assert "OK: chain and checkpoints verify" in result.output


def test_verify_names_the_first_bad_seq(db: str) -> None:
    """verify exits 1 and names the first altered entry."""
    conn = sqlite3.connect(db.removeprefix("sqlite://"), isolation_level=None)
    conn.execute("DROP TRIGGER audit_entries_no_update")
    conn.execute("UPDATE audit_entries SET outcome = 'ok' WHERE seq = 7")
    conn.close()
    result = run("verify", "--db", db)
    assert result.exit_code == 1
    assert "first bad seq 7" in result.output


def test_verify_refuses_checkpoints_of_another_signer(db: str, tmp_path: Path) -> None:
    """verify exits 1 when the checkpoints are not signed by a trusted certificate."""
    result = run("verify", "--db", db, "--cert", cert_file(tmp_path, EcSigner.generate()))
    assert result.exit_code == 1
    assert "checkpoint_untrusted" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--partner", "XB"], {"req-1", "rcpt-1"}),
        (["--outcome", "refused", "--limit", "3"], {"x-0", "x-1", "x-2"}),
        (["--message-id", "req-1", "--type", "maa-request"], {"req-1"}),
        (["--agreement", "XA-XB-MAA"], {"req-1"}),
        (["--until", "2000-01-01"], set()),
    ],
)
def test_search_filters(db: str, args: list[str], expected: set[str]) -> None:
    """search --json lists exactly the entries matching the filters."""
    result = run("search", "--db", db, "--json", *args)
    assert result.exit_code == 0, result.output
    found = {e["message_id"] for e in json_lines(result)}
    assert found == expected


def test_search_refuses_a_bad_time(db: str) -> None:
    """A --since that is not an ISO time is a usage error (exit 2)."""
    assert run("search", "--db", db, "--since", "yesterday").exit_code == 2


def test_show_prints_timeline_with_evidence(db: str) -> None:
    """show prints every entry of the message and its receipt, with the evidence digests."""
    result = run("show", "--db", db, "req-1")
    assert result.exit_code == 0, result.output
    for text in (
        "received",
        "policy_decision",
        "receipt",
        "rcpt-1 (correlated)",
        evidence_digest(ENVELOPE),
        evidence_digest(RECEIPT),
        "kept until",
    ):
        assert text in result.output


def test_show_unknown_message_exits_1(db: str) -> None:
    """show exits 1 when the log has no entry for the message."""
    result = run("show", "--db", db, "nope")
    assert result.exit_code == 1 and "no entries" in result.output


def test_export_then_verify_bundle(db: str, tmp_path: Path, checkpoint_signer: EcSigner) -> None:
    """An exported bundle verifies offline; editing one line of it makes verify exit 1."""
    out = tmp_path / "bundle"
    result = run("export", "--db", db, "--from", "1", "--to", "20", "--out", str(out))
    assert result.exit_code == 0, result.output
    ok = run("verify", "--bundle", str(out), "--cert", cert_file(tmp_path, checkpoint_signer))
    assert ok.exit_code == 0, ok.output
    lines = (out / "entries.jsonl").read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"XC"', '"XD"')
    (out / "entries.jsonl").write_text("".join(lines))
    bad = run("verify", "--bundle", str(out))
    assert bad.exit_code == 1 and "first bad seq 4" in bad.output


def test_purge_records_itself_and_chain_still_verifies(db: str) -> None:
    """purge drops expired evidence, appends an operator_action entry, and the log verifies."""
    result = run("purge", "--db", db, "--before", "2999-01-01")
    assert result.exit_code == 0, result.output
    assert "purged 2 evidence" in result.output
    actions = run("search", "--db", db, "--json", "--event", "operator_action")
    entry = json_lines(actions)[-1]
    assert entry["actor"] and entry["details"]["evidence_purged"] == 2
    assert run("verify", "--db", db).exit_code == 0
    assert "purged" in run("show", "--db", db, "req-1").output


def test_missing_database_is_one_line_error(tmp_path: Path) -> None:
    """A log that does not exist is reported in one line, exit 1, and is not created."""
    result = run("verify", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "AUDIT_NOT_FOUND" in result.output
    assert not (tmp_path / "none.db").exists()


def test_bad_config_exits_2(tmp_path: Path) -> None:
    """An unreadable --config is a configuration error: exit 2, one line."""
    result = run("verify", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2 and "CONFIG" in result.output


@pytest.mark.parametrize(("limit", "status"), [("100000", 0), ("100001", 2), ("0", 2)])
def test_search_limit_has_a_maximum(db: str, limit: str, status: int) -> None:
    """search --limit takes 1 to 100,000; a larger (or smaller) one is a usage error, exit 2."""
    result = run("search", "--db", db, "--limit", limit)
    assert result.exit_code == status, result.output
    if status:
        assert "1<=x<=100000" in result.output
