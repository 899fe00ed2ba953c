"""Tests for gateway/ca/authority.py: a CA that issues, revokes and publishes CRLs."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pem
from gateway.ca import authority
from gateway.errors import ConfigError
from maagw_testing.pki import NOW, issue_one, mode_of

pytestmark = pytest.mark.usefixtures("logs")


# --------------------------------------------------------------------------- init-ca


def test_init_ca_writes_a_self_signed_path_length_zero_ca(ca_dir: Path) -> None:
    """init_ca writes ca.pem, a 0600 ca.key and an index; the CA may only sign leaves."""
    cert = pem.load_cert(ca_dir / "ca.pem")
    assert mode_of(ca_dir / "ca.key") == 0o600
    assert (ca_dir / "index.json").exists()
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (bc.ca, bc.path_length) == (True, 0)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_init_ca_refuses_to_replace_an_existing_ca(ca_dir: Path) -> None:
    """A second init_ca into the same directory is refused and the old key survives."""
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(ConfigError) as err:
        authority.init_ca("Other", ca_dir)
    assert err.value.code == "CONFIG_CA_EXISTS"
    assert (ca_dir / "ca.key").read_bytes() == before


def test_private_keys_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    """Keys are created 0600 regardless of the process umask."""
    old = os.umask(0)
    try:
        authority.init_ca("CA", tmp_path / "ca")
        _, _, key = issue_one(tmp_path / "ca", tmp_path / "out")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "ca" / "ca.key") == 0o600
    assert mode_of(key) == 0o600


# --------------------------------------------------------------------------- issue

KIND_CASES = [
    # kind, EKU expected, content_commitment, OU operator
    ("tls-server", [ExtendedKeyUsageOID.SERVER_AUTH], False, False),
    ("tls-client", [ExtendedKeyUsageOID.CLIENT_AUTH], False, False),
    ("operator", [ExtendedKeyUsageOID.CLIENT_AUTH], False, True),
    ("signing", None, True, False),
]


@pytest.mark.parametrize(("kind", "eku", "non_repudiation", "operator_ou"), KIND_CASES)
def test_issue_sets_the_extensions_of_each_kind(
    ca_dir: Path,
    out: Path,
    kind: str,
    eku: list[x509.ObjectIdentifier] | None,
    non_repudiation: bool,
    operator_ou: bool,
) -> None:
    """Each kind gets its key usage and EKU, CA=false, AKI = the CA's SKI, a 0600 key."""
    cert, _, key_path = issue_one(ca_dir, out, kind, "leaf")
    ca_cert = pem.load_cert(ca_dir / "ca.pem")
    cert.verify_directly_issued_by(ca_cert)
    exts = cert.extensions
    assert exts.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = exts.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment is non_repudiation
    assert not ku.key_cert_sign
    if eku is None:
        with pytest.raises(x509.ExtensionNotFound):
            exts.get_extension_for_class(x509.ExtendedKeyUsage)
    else:
        assert list(exts.get_extension_for_class(x509.ExtendedKeyUsage).value) == eku
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert (units == ["operator"]) is operator_ou
    assert mode_of(key_path) == 0o600
    assert pem.cert_kind(cert) == kind
    assert 0 < cert.serial_number < 2**159


def test_issue_records_the_certificate_in_the_ca_index(ca_dir: Path, out: Path) -> None:
    """The index maps the serial (hex) to subject, kind, not_after and no revocation."""
    cert, _, _ = issue_one(ca_dir, out, "signing", "sig")
    entry = authority.read_index(ca_dir)["certs"][pem.serial_hex(cert.serial_number)]
    assert entry["kind"] == "signing"
    assert entry["subject"] == "CN=sig"
    assert dt.datetime.fromisoformat(entry["not_after"]) == cert.not_valid_after_utc
    assert entry["revoked"] is None


@pytest.mark.parametrize(
    ("sans", "dns", "ips"),
    [
        ((), ["gw.xa.test"], []),
        (("gw.xa.test", "127.0.0.1"), ["gw.xa.test"], ["127.0.0.1"]),
        (("::1", "DNS:localhost", "IP:10.0.0.1"), ["localhost"], ["::1", "10.0.0.1"]),
    ],
)
def test_tls_server_sans_parse_dns_names_and_ip_addresses(
    ca_dir: Path, out: Path, sans: tuple[str, ...], dns: list[str], ips: list[str]
) -> None:
    """A server certificate's SANs are DNS names or IPs, and default to its name."""
    cert, _, _ = issue_one(ca_dir, out, "tls-server", "gw.xa.test", sans=sans)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == dns
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ips


def test_client_certificates_have_no_san_unless_asked(ca_dir: Path, out: Path) -> None:
    """SANs are optional for client certificates."""
    cert, _, _ = issue_one(ca_dir, out, "tls-client", "client")
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_rsa_server_certificate_is_3072_bits_with_key_encipherment(ca_dir: Path, out: Path) -> None:
    """key_type='rsa' makes an RSA-3072 key, and a TLS server cert then allows keyEncipherment."""
    cert, _, _ = issue_one(ca_dir, out, "tls-server", "rsa-server", key_type="rsa")
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_crl_url_becomes_a_distribution_point(ca_dir: Path, out: Path) -> None:
    """crl_url is written as the certificate's CRL distribution point."""
    url = "http://crl.xa.test/ca.crl"
    cert, _, _ = issue_one(ca_dir, out, "tls-client", "c", crl_url=url)
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name == [x509.UniformResourceIdentifier(url)]


def test_not_before_and_days_make_expired_and_future_windows(ca_dir: Path, out: Path) -> None:
    """not_before and days set the validity window exactly, in the past or in the future."""
    start = NOW - dt.timedelta(days=40)
    old, _, _ = issue_one(ca_dir, out, name="old", not_before=start, days=10)
    assert old.not_valid_before_utc == start
    assert old.not_valid_after_utc < NOW
    future, _, _ = issue_one(ca_dir, out, name="future", not_before=NOW + dt.timedelta(days=3))
    assert future.not_valid_before_utc > NOW


def test_leaf_validity_never_outlives_the_ca(tmp_path: Path) -> None:
    """A leaf asked to outlive its CA is cut at the CA's not-after."""
    authority.init_ca("Short CA", tmp_path / "ca", days=10)
    cert, _, _ = issue_one(tmp_path / "ca", tmp_path / "out", days=397)
    ca_cert = pem.load_cert(tmp_path / "ca" / "ca.pem")
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("kind", "name", "days", "code"),
    [
        ("tls-wizard", "x", 30, "CONFIG_CERT_KIND"),
        ("tls-client", "../escape", 30, "CONFIG_CERT_NAME"),
        ("tls-client", "x", 0, "CONFIG_CERT_DAYS"),
    ],
)
def test_issue_refuses_bad_arguments(
    ca_dir: Path, out: Path, kind: str, name: str, days: int, code: str
) -> None:
    """Unknown kinds, path-like names and empty validity are configuration errors."""
    with pytest.raises(ConfigError) as err:
        authority.issue(ca_dir, kind, name, out, days=days)
    assert err.value.code == code


def test_issue_needs_a_ca_directory(tmp_path: Path) -> None:
    """Issuing from a directory without ca.pem is a configuration error naming init-ca."""
    with pytest.raises(ConfigError, match="init-ca"):
        authority.issue(tmp_path, "tls-client", "x", tmp_path / "out")


def test_passphrase_encrypts_the_key(ca_dir: Path, out: Path) -> None:
    """A key written with a passphrase cannot be loaded without it, and loads with it."""
    _, _, key_path = issue_one(ca_dir, out, passphrase=b"s3cret")
    assert b"ENCRYPTED" in key_path.read_bytes()
    with pytest.raises(ConfigError) as err:
        pem.load_private_key(key_path)
    assert err.value.code == "CONFIG_KEY_PASSPHRASE"
    with pytest.raises(ConfigError):
        pem.load_private_key(key_path, b"wrong")
    assert isinstance(pem.load_private_key(key_path, b"s3cret"), ec.EllipticCurvePrivateKey)


def test_encrypted_ca_key_needs_its_passphrase_to_issue(tmp_path: Path) -> None:
    """An encrypted CA key is opened with ca_passphrase; without it issuing is refused."""
    authority.init_ca("CA", tmp_path / "ca", passphrase=b"ca-pass")
    with pytest.raises(ConfigError):
        authority.issue(tmp_path / "ca", "tls-client", "c", tmp_path / "out")
    authority.issue(tmp_path / "ca", "tls-client", "c", tmp_path / "out", ca_passphrase=b"ca-pass")
    assert (tmp_path / "out" / "c.pem").exists()


# --------------------------------------------------------------------------- revoke, crl


def test_revoke_marks_the_index_and_is_idempotent(ca_dir: Path, out: Path) -> None:
    """Revoking records reason and time; revoking again changes nothing."""
    cert, _, _ = issue_one(ca_dir, out)
    serial = pem.serial_hex(cert.serial_number)
    colon_lower = ":".join(re.findall("..", serial)).lower()
    assert authority.revoke(ca_dir, colon_lower, "KEYCOMPROMISE") == [ca_dir / "index.json"]
    entry = authority.read_index(ca_dir)["certs"][serial]
    assert entry["revoked"]["reason"] == "keyCompromise"
    assert authority.revoke(ca_dir, serial, "superseded") == []
    assert authority.read_index(ca_dir)["certs"][serial]["revoked"]["reason"] == "keyCompromise"


def test_issue_and_revoke_log_events_without_key_material(
    ca_dir: Path, out: Path, logs: list[dict[str, object]]
) -> None:
    """cert_issued and cert_revoked are logged with the serial; no PEM text reaches the log."""
    cert, _, _ = issue_one(ca_dir, out)
    serial = pem.serial_hex(cert.serial_number)
    authority.revoke(ca_dir, serial, "superseded")
    events = {e["event"]: e for e in logs}
    assert events["cert_issued"]["serial"] == serial
    assert events["cert_revoked"]["reason"] == "superseded"
    assert "BEGIN" not in repr(logs)


@pytest.mark.parametrize(
    ("serial", "reason", "code"),
    [("AB", "superseded", "CONFIG_CERT_SERIAL"), (None, "bored", "CONFIG_CRL_REASON")],
)
def test_revoke_refuses_unknown_serials_and_reasons(
    ca_dir: Path, out: Path, serial: str | None, reason: str, code: str
) -> None:
    """A serial the CA never issued, or a reason outside RFC 5280, is refused."""
    cert, _, _ = issue_one(ca_dir, out)
    with pytest.raises(ConfigError) as err:
        authority.revoke(ca_dir, serial or pem.serial_hex(cert.serial_number), reason)
    assert err.value.code == code


def test_crl_lists_revoked_serials_with_reasons_and_next_update(ca_dir: Path, out: Path) -> None:
    """The CRL is signed by the CA, names each revoked serial and reason, and numbers itself."""
    revoked, _, _ = issue_one(ca_dir, out, name="bad")
    kept, _, _ = issue_one(ca_dir, out, name="good")
    authority.revoke(ca_dir, pem.serial_hex(revoked.serial_number), "cessationOfOperation")
    crl_path = out / "crl.pem"
    authority.make_crl(ca_dir, crl_path, next_update_days=3)
    crl = pem.load_crl(crl_path)
    ca_cert = pem.load_cert(ca_dir / "ca.pem")
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(revoked.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.cessation_of_operation
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert crl.next_update_utc is not None
    assert abs(crl.next_update_utc - (NOW + dt.timedelta(days=3))) < dt.timedelta(minutes=5)
    first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    authority.make_crl(ca_dir, crl_path)
    second = pem.load_crl(crl_path).extensions.get_extension_for_class(x509.CRLNumber).value
    assert second.crl_number == first + 1
