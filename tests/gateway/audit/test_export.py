"""Tests for gateway/audit/export.py: an exported bundle verifies offline, with openssl, and partly.

Every test that takes ``audit_url`` runs once per backend; the PostgreSQL run skips when no
server is reachable (and fails instead when CI=true or MAAGW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.export import verify_bundle
from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from maagw_testing.audit import EcSigner, filled

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
