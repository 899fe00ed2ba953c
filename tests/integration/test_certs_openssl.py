"""Certificates and CRLs made by `maagw certs` checked by the real openssl binary."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from gateway import pem
from gateway.cli.certs import certs as certs_cli

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Keep structlog output out of the CLI's stdout."""
    with structlog.testing.capture_logs():
        yield


def maagw_certs(*args: str) -> list[Path]:
    """Run `maagw certs ARGS`, require exit 0, return the paths it printed."""
    result = CliRunner().invoke(certs_cli, list(args))
    assert result.exit_code == 0, result.output
    return [Path(line) for line in result.stdout.split()]


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the openssl binary and return the completed process (not checked)."""
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def issued(tmp_path: Path) -> dict[str, Path]:
    """A CA and one certificate of every kind, EC and RSA, made through the CLI."""
    ca = tmp_path / "ca"
    out = tmp_path / "out"
    maagw_certs("init-ca", "--name", "XA Test CA", "--out", str(ca))
    paths = {"ca": ca}
    for kind in pem.KINDS:
        maagw_certs("issue", "--ca", str(ca), "--kind", kind, "--name", kind,
                    "--san", "127.0.0.1", "--san", "gw.xa.test", "--out", str(out))  # fmt: skip
        paths[kind] = out / f"{kind}.pem"
    maagw_certs("issue", "--ca", str(ca), "--kind", "tls-server", "--name", "rsa-server",
                "--key-type", "rsa", "--out", str(out))  # fmt: skip
    paths["rsa-server"] = out / "rsa-server.pem"
    return paths


LEAVES = [*pem.KINDS, "rsa-server"]


@pytest.mark.parametrize("name", LEAVES)
def test_openssl_verifies_every_issued_certificate(issued: dict[str, Path], name: str) -> None:
    """`openssl verify -CAfile ca.pem leaf.pem` accepts every kind of certificate issued."""
    proc = openssl("verify", "-CAfile", str(issued["ca"] / "ca.pem"), str(issued[name]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(": OK")


@pytest.mark.parametrize(
    ("name", "purpose"),
    [("tls-server", "sslserver"), ("tls-client", "sslclient"), ("operator", "sslclient")],
)
def test_openssl_accepts_the_tls_purpose_of_each_kind(
    issued: dict[str, Path], name: str, purpose: str
) -> None:
    """openssl agrees that TLS certificates are fit for their TLS role."""
    proc = openssl(
        "verify", "-purpose", purpose, "-CAfile", str(issued["ca"] / "ca.pem"), str(issued[name])
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openssl_rejects_a_server_certificate_for_client_use(issued: dict[str, Path]) -> None:
    """A TLS server certificate is not accepted by openssl as a TLS client certificate."""
    proc = openssl(
        "verify", "-purpose", "sslclient", "-CAfile", str(issued["ca"] / "ca.pem"),
        str(issued["tls-server"]),
    )  # fmt: skip
    assert proc.returncode != 0


def test_revoked_certificate_fails_openssl_crl_check(
    issued: dict[str, Path], tmp_path: Path
) -> None:
    """After revoke + crl, openssl -crl_check fails the revoked cert and passes the others."""
    ca = issued["ca"]
    revoked = issued["tls-client"]
    serial = openssl("x509", "-in", str(revoked), "-noout", "-serial").stdout.strip()
    assert serial.startswith("serial=")
    maagw_certs("revoke", "--ca", str(ca), serial.removeprefix("serial="),
                "--reason", "keyCompromise")  # fmt: skip
    crl = tmp_path / "crl.pem"
    assert crl in maagw_certs("crl", "--ca", str(ca), "--out", str(crl))

    crl_args = ["verify", "-crl_check", "-CRLfile", str(crl), "-CAfile", str(ca / "ca.pem")]
    proc = openssl(*crl_args, str(revoked))
    assert proc.returncode != 0
    assert "certificate revoked" in proc.stdout + proc.stderr
    for other in ("tls-server", "signing", "operator"):
        proc = openssl(*crl_args, str(issued[other]))
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openssl_reads_the_crl_reason_and_signature(
    issued: dict[str, Path], tmp_path: Path
) -> None:
    """openssl verifies the CRL's signature with the CA and shows the revocation reason."""
    ca = issued["ca"]
    serial = pem.serial_hex(pem.load_cert(issued["signing"]).serial_number)
    maagw_certs("revoke", "--ca", str(ca), serial, "--reason", "superseded")
    crl = tmp_path / "crl.pem"
    maagw_certs("crl", "--ca", str(ca), "--out", str(crl))
    proc = openssl("crl", "-in", str(crl), "-CAfile", str(ca / "ca.pem"), "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    assert "verify OK" in proc.stderr + proc.stdout
    assert serial in proc.stdout and "Superseded" in proc.stdout and "Next Update" in proc.stdout


def test_spki_pin_matches_openssl(issued: dict[str, Path]) -> None:
    """spki_pin equals SHA-256 over the DER public key as openssl extracts it."""
    cert = issued["tls-server"]
    pubkey_pem = openssl("x509", "-in", str(cert), "-noout", "-pubkey").stdout
    der = subprocess.run(
        [OPENSSL or "openssl", "pkey", "-pubin", "-outform", "DER"],
        input=pubkey_pem.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert pem.spki_pin(pem.load_cert(cert)) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_openssl_reads_encrypted_keys_with_the_passphrase(tmp_path: Path) -> None:
    """A key written with --passphrase-env is encrypted PKCS#8 that openssl opens with it."""
    ca = tmp_path / "ca"
    maagw_certs("init-ca", "--name", "CA", "--out", str(ca))
    result = CliRunner().invoke(
        certs_cli,
        [
            "issue",
            "--ca",
            str(ca),
            "--kind",
            "signing",
            "--name",
            "sig",
            "--out",
            str(tmp_path),
            "--passphrase-env",
            "SIG_PW",
        ],
        env={"SIG_PW": "correct horse"},
    )
    assert result.exit_code == 0, result.output
    key = str(tmp_path / "sig.key")
    assert openssl("pkey", "-in", key, "-noout", "-passin", "pass:wrong").returncode != 0
    assert openssl("pkey", "-in", key, "-noout", "-passin", "pass:correct horse").returncode == 0
