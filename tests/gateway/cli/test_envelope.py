"""Tests for gateway/cli/envelope.py: ``maagw envelope sign|verify|inspect``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree
from structlog.testing import capture_logs

from gateway import pem
from gateway.cli.envelope import envelope
from gateway.xml import envelope as envelope_mod
from gateway.xml import signature as signing


def _identity(directory: Path, name: str) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    key, cert, _ = _identity(tmp_path, "xa")
    _, other, _ = _identity(tmp_path, "xb")
    header = envelope_mod.Header(
        message_id="m-cli-1",
        sender="XA",
        receiver="XB",
        agreement="XA-XB-MAA",
        message_type="maa.request",
        created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        payload_format="maa-xml",
        categories=("customs",),
    )
    unsigned = tmp_path / "unsigned.xml"
    unsigned.write_bytes(
        etree.tostring(
            envelope_mod.build_envelope(
                header, b'<Request xmlns="urn:example:maa">data</Request>', "application/xml"
            )
        )
    )
    return {"key": key, "cert": cert, "other": other, "unsigned": unsigned}


def _sign(files: dict[str, Path], tmp_path: Path) -> Path:
    # capture_logs keeps structlog's unconfigured default (stdout) out of the signed output
    with capture_logs() as logs:
        result = CliRunner().invoke(
            envelope,
            [
                "sign",
                "--key",
                str(files["key"]),
                "--cert",
                str(files["cert"]),
                str(files["unsigned"]),
            ],
        )
    assert result.exit_code == 0, result.output
    assert [entry["event"] for entry in logs] == ["signer_loaded"]
    signed = tmp_path / "signed.xml"
    signed.write_bytes(result.stdout_bytes)
    return signed


def test_sign_then_verify(files: dict[str, Path], tmp_path: Path) -> None:
    """sign writes a signed document that verify accepts, printing the subject and the labelled serial, fingerprint and pin."""
    signed = _sign(files, tmp_path)
    result = CliRunner().invoke(envelope, ["verify", "--cert", str(files["cert"]), str(signed)])
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    assert result.stdout == (
        f"signer: CN=xa serial={pem.serial_hex(cert.serial_number)} "
        f"cert_sha256={signing.cert_fingerprint(cert).removeprefix('sha256:')} "
        f"spki_pin={pem.spki_pin(cert)}\n"
    )


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda data: data.replace(b"data", b"date"), "SIG_INVALID"),
        (lambda data: data, "SIG_CERT_UNTRUSTED"),
    ],
    ids=["altered", "unpinned"],
)
def test_verify_refusal_is_one_line_and_exit_1(
    files: dict[str, Path], tmp_path: Path, tamper: object, code: str
) -> None:
    """A refused document exits 1 with ``CODE: reason`` on stderr and nothing on stdout."""
    signed = _sign(files, tmp_path)
    signed.write_bytes(tamper(signed.read_bytes()))  # type: ignore[operator]
    pin = files["cert"] if code != "SIG_CERT_UNTRUSTED" else files["other"]
    result = CliRunner().invoke(envelope, ["verify", "--cert", str(pin), str(signed)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{code}: ")
    assert result.stderr.count("\n") == 1


def test_verify_interop_profile_accepts_a_partner_vector() -> None:
    """--profile interop verifies a public ID-referenced vector that strict refuses."""
    vectors = Path(__file__).resolve().parents[2] / "data" / "xmldsig-interop"
    directory = vectors / "aleksey-xmldsig-01-enveloped"
    args = ["verify", "--cert", str(directory / "cacert.pem")]
    doc = str(directory / "enveloped-sha256-rsa-sha256-test-1.xml")
    strict = CliRunner().invoke(envelope, [*args, doc])
    assert strict.exit_code == 1
    assert strict.stderr.startswith("SIG_PROFILE: ")
    interop = CliRunner().invoke(envelope, [*args, "--profile", "interop", doc])
    assert interop.exit_code == 0, interop.output
    assert interop.stdout.startswith("signer: CN=signxml test serial=")


def test_inspect_prints_header_fields_after_verification(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """inspect --cert verifies, then prints the header as the gateway reads it."""
    signed = _sign(files, tmp_path)
    result = CliRunner().invoke(envelope, ["inspect", "--cert", str(files["cert"]), str(signed)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("signer: CN=xa ")
    assert "message_id: m-cli-1" in lines
    assert "sender: XA" in lines
    assert "categories: customs" in lines
    assert "created: 2026-01-02T03:04:05+00:00" in lines


def test_inspect_without_cert_warns(files: dict[str, Path]) -> None:
    """inspect without --cert still reads the header but says the signature was not checked."""
    result = CliRunner().invoke(envelope, ["inspect", str(files["unsigned"])])
    assert result.exit_code == 0, result.output
    assert "not verified" in result.stderr
    assert "message_id: m-cli-1" in result.stdout.splitlines()


def test_sign_with_a_mismatched_pair_is_a_config_error(files: dict[str, Path]) -> None:
    """A key that does not belong to the certificate exits 2 with one line."""
    with capture_logs():
        result = CliRunner().invoke(
            envelope,
            [
                "sign",
                "--key",
                str(files["key"]),
                "--cert",
                str(files["other"]),
                str(files["unsigned"]),
            ],
        )
    assert result.exit_code == 2
    assert result.stderr.startswith("CONFIG_INVALID: ")
