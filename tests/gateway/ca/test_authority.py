"""Tests for gateway/certs.py and its `maagw certs` commands (gateway/cli_certs.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel

from gateway import pem
from gateway.ca import authority, inspect, partner_import
from gateway.ca.rotation import rotate
from gateway.cli.certs import certs as certs_cli
from gateway.errors import ConfigError

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # certificates keep whole seconds


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict[str, object]]]:
    """Capture structlog events (so that log lines do not mix with CLI output)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A fresh EC CA in tmp_path/ca."""
    authority.init_ca("Test CA", tmp_path / "ca", org="XA")
    return tmp_path / "ca"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def issue_one(ca_dir: Path, out: Path, kind: str = "tls-client", name: str = "leaf", **kw: object):
    """Issue one certificate and return (cert, cert path, key path)."""
    authority.issue(ca_dir, kind, name, out, **kw)  # type: ignore[arg-type]
    return pem.load_cert(out / f"{name}.pem"), out / f"{name}.pem", out / f"{name}.key"


def forge_leaf(ca_dir: Path, key: object, path: Path) -> Path:
    """Write a leaf certificate for an arbitrary public key, signed by the test CA."""
    ca = authority.load_ca(ca_dir)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=100))
        .sign(ca.key, hashes.SHA256())
    )
    pem.write_cert(path, cert)
    pem.write_private_key(path.with_suffix(".key"), key)  # type: ignore[arg-type]
    return path


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


# --------------------------------------------------------------------------- loading, pins


def test_spki_pin_is_sha256_of_the_der_public_key(ca_dir: Path, out: Path) -> None:
    """The pin is 'sha256:' + lowercase hex over the DER SubjectPublicKeyInfo of the key file."""
    cert, _, key_path = issue_one(ca_dir, out)
    der = (
        pem.load_private_key(key_path)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert pem.spki_pin(cert) == "sha256:" + hashlib.sha256(der).hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pem.spki_pin(cert))


def test_load_certs_reads_bundles_and_refuses_garbage(ca_dir: Path, out: Path) -> None:
    """load_certs returns every certificate of a bundle; a non-PEM file is a ConfigError."""
    a, a_path, _ = issue_one(ca_dir, out, name="a")
    b, b_path, _ = issue_one(ca_dir, out, name="b")
    bundle = out / "bundle.pem"
    bundle.write_bytes(a_path.read_bytes() + b_path.read_bytes())
    assert pem.load_certs(bundle) == [a, b]
    assert pem.load_cert(bundle) == a
    (out / "junk.pem").write_text("hello")
    with pytest.raises(ConfigError):
        pem.load_certs(out / "junk.pem")
    with pytest.raises(ConfigError):
        pem.load_cert(out / "missing.pem")


@pytest.mark.parametrize(
    ("text", "value"),
    [("0A:BC", 0xABC), ("abc", 0xABC), ("serial=0ABC", 0xABC), ("0xabc", 0xABC), ("0a bc", 0xABC)],
)
def test_parse_serial_accepts_openssl_spellings(text: str, value: int) -> None:
    """Serials are hex in any case, with colons, spaces, 0x or openssl's serial= prefix."""
    assert pem.parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "12g4"])
def test_parse_serial_refuses_non_hex(text: str) -> None:
    """A serial that is not hex is a configuration error."""
    with pytest.raises(ConfigError):
        pem.parse_serial(text)


@pytest.mark.parametrize(("serial", "text"), [(0xABC, "0ABC"), (0xAB, "AB"), (1, "01")])
def test_serial_hex_is_even_length_upper_case(serial: int, text: str) -> None:
    """serial_hex prints serials the way openssl x509 -serial does."""
    assert pem.serial_hex(serial) == text


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


# --------------------------------------------------------------------------- check


def test_check_accepts_a_good_pair(ca_dir: Path, out: Path) -> None:
    """A fresh certificate with its own 0600 key from this CA has no problems."""
    _, cert_path, key_path = issue_one(ca_dir, out)
    result = inspect.check(cert_path, key_path, ca=ca_dir)
    assert result.ok, result.problems
    assert result.warnings == []


def test_check_refuses_a_key_that_does_not_match(ca_dir: Path, out: Path) -> None:
    """A key from another certificate is a problem."""
    _, cert_path, _ = issue_one(ca_dir, out, name="a")
    _, _, other_key = issue_one(ca_dir, out, name="b")
    result = inspect.check(cert_path, other_key, ca=ca_dir)
    assert [p for p in result.problems if "does not match" in p]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_check_refuses_group_or_world_readable_keys(ca_dir: Path, out: Path, mode: int) -> None:
    """A key file readable by group or others is a problem."""
    _, cert_path, key_path = issue_one(ca_dir, out)
    key_path.chmod(mode)
    result = inspect.check(cert_path, key_path)
    assert result.problems == [
        f"key file {key_path} has mode {mode:04o}; it must be 0600 or stricter"
    ]


def test_check_accepts_a_stricter_key_mode(ca_dir: Path, out: Path) -> None:
    """Mode 0400 is stricter than 0600 and accepted."""
    _, cert_path, key_path = issue_one(ca_dir, out)
    key_path.chmod(0o400)
    assert inspect.check(cert_path, key_path).ok


@pytest.mark.parametrize(
    ("window", "word"),
    [
        ({"not_before": NOW - dt.timedelta(days=40), "days": 10}, "expired"),
        ({"not_before": NOW + dt.timedelta(days=2)}, "not valid before"),
    ],
)
def test_check_refuses_expired_and_not_yet_valid(
    ca_dir: Path, out: Path, window: dict[str, object], word: str
) -> None:
    """A certificate outside its validity window is a problem."""
    _, cert_path, key_path = issue_one(ca_dir, out, **window)
    result = inspect.check(cert_path, key_path, ca=ca_dir)
    assert len(result.problems) == 1 and word in result.problems[0]


def test_check_warns_under_thirty_days(ca_dir: Path, out: Path) -> None:
    """Fewer than 30 days left is a warning, not a problem."""
    _, cert_path, key_path = issue_one(ca_dir, out, days=20)
    result = inspect.check(cert_path, key_path)
    assert result.ok and result.warnings and "expires in" in result.warnings[0]


@pytest.mark.parametrize(
    ("make_key", "word"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits"),  # noqa: S505 - the weak key check must see one
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
    ],
)
def test_check_refuses_weak_rsa_and_unsupported_curves(
    ca_dir: Path, out: Path, make_key: object, word: str
) -> None:
    """RSA under 2048 bits and curves other than P-256/384/521 are refused."""
    cert_path = forge_leaf(ca_dir, make_key(), out / "weak.pem")  # type: ignore[operator]
    result = inspect.check(cert_path, out / "weak.key", ca=ca_dir)
    assert len(result.problems) == 1 and word in result.problems[0]


def test_check_refuses_a_certificate_from_another_ca(
    tmp_path: Path, ca_dir: Path, out: Path
) -> None:
    """A certificate not issued by the given CA is a problem."""
    authority.init_ca("Other CA", tmp_path / "other")
    _, cert_path, key_path = issue_one(tmp_path / "other", out)
    result = inspect.check(cert_path, key_path, ca=ca_dir / "ca.pem")
    assert len(result.problems) == 1 and "not issued by" in result.problems[0]


def test_check_refuses_a_revoked_certificate(ca_dir: Path, out: Path) -> None:
    """With a CA directory, a certificate its index lists as revoked is a problem."""
    cert, cert_path, key_path = issue_one(ca_dir, out)
    authority.revoke(ca_dir, pem.serial_hex(cert.serial_number), "keyCompromise")
    result = inspect.check(cert_path, key_path, ca=ca_dir)
    assert len(result.problems) == 1 and "revoked" in result.problems[0]


# --------------------------------------------------------------------------- list, expiry


def test_days_to_expiry_counts_whole_days_and_goes_negative(ca_dir: Path, out: Path) -> None:
    """days_to_expiry is floor((not_after - now) / 1 day), negative once expired."""
    cert, _, _ = issue_one(ca_dir, out, not_before=NOW, days=10)
    assert pem.days_to_expiry(cert, NOW) == 10
    assert pem.days_to_expiry(cert, NOW + dt.timedelta(days=9, hours=23)) == 0
    assert pem.days_to_expiry(cert, NOW + dt.timedelta(days=11)) == -1


def test_expiry_report_gives_path_subject_and_days_left(ca_dir: Path, out: Path) -> None:
    """expiry_report has one row per certificate, bundles included."""
    _, a, _ = issue_one(ca_dir, out, name="a", not_before=NOW, days=5)
    rows = inspect.expiry_report([a, ca_dir / "ca.pem"], NOW)
    assert rows[0] == (a, "CN=a", 5)
    assert rows[1][1] == "CN=Test CA,O=XA" and rows[1][2] >= 3649


def test_pem_files_skips_keys_and_crls(ca_dir: Path, out: Path) -> None:
    """Only files holding certificates are listed from a directory."""
    issue_one(ca_dir, out, name="a")
    authority.make_crl(ca_dir, out / "crl.pem")
    (out / "a.key").rename(out / "a-key.pem")
    assert pem.pem_files(out) == [out / "a.pem"]


def test_configured_cert_paths_walks_settings(ca_dir: Path, out: Path, tmp_path: Path) -> None:
    """Certificate paths anywhere in a settings model are found, relative ones against base."""
    _, a, _ = issue_one(ca_dir, out, name="a")

    class Partner(BaseModel):
        ca: Path
        signing_certs: list[str]

    class Settings(BaseModel):
        tls_cert: Path
        tls_key: Path
        partners: dict[str, Partner]

    settings = Settings(
        tls_cert=a,
        tls_key=out / "a.key",
        partners={"XB": Partner(ca=Path("ca/ca.pem"), signing_certs=[str(out / "missing.pem")])},
    )
    found = inspect.configured_cert_paths(settings, base=tmp_path)
    assert found == sorted([a.resolve(), (ca_dir / "ca.pem").resolve()])


# --------------------------------------------------------------------------- rotate


def test_rotate_issues_a_dated_successor_next_to_the_old(ca_dir: Path, out: Path) -> None:
    """rotate writes NAME-<date>.pem/.key, leaves the old one, and reports both pins."""
    old, old_path, _ = issue_one(ca_dir, out, "signing", "xa-signing", org="XA")
    before = old_path.read_bytes()
    rotation = rotate(ca_dir, "xa-signing", out, overlap_days=14, now=NOW)
    assert rotation.new_cert == out / f"xa-signing-{NOW:%Y%m%d}.pem"
    assert rotation.old_cert == old_path and old_path.read_bytes() == before
    new = pem.load_cert(rotation.new_cert)
    assert pem.cert_kind(new) == "signing"
    assert rotation.old_pin == pem.spki_pin(old) != rotation.new_pin == pem.spki_pin(new)
    assert rotation.overlap_until == NOW + dt.timedelta(days=14)
    assert mode_of(rotation.new_key) == 0o600
    again = rotate(ca_dir, "xa-signing", out, now=NOW)
    assert again.new_cert == out / f"xa-signing-{NOW:%Y%m%d}-2.pem"


def test_rotate_needs_a_current_certificate(ca_dir: Path, out: Path) -> None:
    """Rotating a name with no certificate is a configuration error."""
    out.mkdir()
    with pytest.raises(ConfigError):
        rotate(ca_dir, "nothing", out)


# --------------------------------------------------------------------------- import-partner


@pytest.fixture
def partner(tmp_path: Path) -> Path:
    """A partner's CA with a TLS server, a TLS client and a signing certificate."""
    ca = tmp_path / "xb-ca"
    authority.init_ca("XB CA", ca)
    for kind, name in [
        ("tls-server", "gw.xb.test"),
        ("tls-client", "xb-client"),
        ("signing", "xb-sig"),
    ]:
        authority.issue(ca, kind, name, tmp_path / "xb")
    return tmp_path


def test_import_partner_writes_the_toml_the_loader_reads(partner: Path) -> None:
    """The TOML names the copied CA, the TLS pins and the signing certs by relative path."""
    xb = partner / "xb"
    dest = partner / "config" / "partners"
    written = partner_import.import_partner(
        "XB",
        partner / "xb-ca" / "ca.pem",
        dest,
        tls_certs=[xb / "gw.xb.test.pem", xb / "xb-client.pem"],
        signing_certs=[xb / "xb-sig.pem"],
        url="https://127.0.0.1:8444",
        name="Customs administration XB",
    )
    assert dest / "XB.toml" in written
    data = tomllib.loads((dest / "XB.toml").read_text())
    assert data["id"] == "XB" and data["url"] == "https://127.0.0.1:8444"
    assert data["name"] == "Customs administration XB"
    assert data["server_name"] == "gw.xb.test"
    assert data["crl"] == ""
    assert pem.load_cert(dest / data["ca"]) == pem.load_cert(partner / "xb-ca" / "ca.pem")
    pins = [pem.spki_pin(pem.load_cert(xb / n)) for n in ("gw.xb.test.pem", "xb-client.pem")]
    assert data["tls_pins"] == pins
    assert [pem.load_cert(dest / p) for p in data["signing_certs"]] == [
        pem.load_cert(xb / "xb-sig.pem")
    ]


def test_import_partner_update_adds_pins_and_keeps_other_keys(partner: Path) -> None:
    """A second import adds a pin (both accepted) and keeps keys it does not manage."""
    xb, dest = partner / "xb", partner / "partners"
    ca = partner / "xb-ca" / "ca.pem"
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client.pem"])
    toml = dest / "XB.toml"
    toml.write_text(toml.read_text() + '\ncrl_stale = "warn"\n')
    authority.issue(partner / "xb-ca", "tls-client", "xb-client-2", xb)
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client-2.pem"])
    data = tomllib.loads(toml.read_text())
    assert len(data["tls_pins"]) == 2 and data["crl_stale"] == "warn"
    partner_import.import_partner("XB", ca, dest, tls_certs=[xb / "xb-client-2.pem"], replace=True)
    assert tomllib.loads(toml.read_text())["tls_pins"] == [
        pem.spki_pin(pem.load_cert(xb / "xb-client-2.pem"))
    ]


def test_import_partner_refuses_certificates_from_another_ca(partner: Path, ca_dir: Path) -> None:
    """A TLS certificate not issued by the partner's CA is refused and nothing is written."""
    _, foreign, _ = issue_one(ca_dir, partner / "other")
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(
            "XB", partner / "xb-ca" / "ca.pem", partner / "p", tls_certs=[foreign]
        )
    assert err.value.code == "CONFIG_PARTNER_CHAIN"
    assert not (partner / "p").exists()


def test_import_partner_copies_the_partners_crl(partner: Path) -> None:
    """A CRL signed by the partner's CA is copied and named in the TOML."""
    authority.make_crl(partner / "xb-ca", partner / "xb.crl")
    dest = partner / "p"
    partner_import.import_partner("XB", partner / "xb-ca" / "ca.pem", dest, crl=partner / "xb.crl")
    data = tomllib.loads((dest / "XB.toml").read_text())
    assert (
        pem.load_crl(dest / data["crl"]).issuer
        == pem.load_cert(partner / "xb-ca" / "ca.pem").subject
    )


def test_import_partner_refuses_a_crl_of_another_ca(partner: Path, ca_dir: Path) -> None:
    """A CRL the partner's CA did not sign is refused and nothing is written."""
    authority.make_crl(ca_dir, partner / "other.crl")
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(
            "XB", partner / "xb-ca" / "ca.pem", partner / "p", crl=partner / "other.crl"
        )
    assert err.value.code == "CONFIG_CRL"
    assert not (partner / "p").exists()


@pytest.mark.parametrize("partner_id", ["xb", "X", "XB/../..", "XB_1"])
def test_import_partner_refuses_ids_the_loader_would_refuse(partner: Path, partner_id: str) -> None:
    """Partner ids follow the configuration's pattern (two capitals, then A-Z, 0-9, -)."""
    with pytest.raises(ConfigError) as err:
        partner_import.import_partner(partner_id, partner / "xb-ca" / "ca.pem", partner / "p")
    assert err.value.code == "CONFIG_PARTNER_ID"


def test_import_partner_refuses_a_leaf_as_ca(partner: Path) -> None:
    """Only a CA certificate may be imported as the partner's CA."""
    with pytest.raises(ConfigError):
        partner_import.import_partner("XB", partner / "xb" / "xb-sig.pem", partner / "p")


# --------------------------------------------------------------------------- CLI


def run(*args: str, env: dict[str, str] | None = None):
    """Invoke `maagw certs ARGS` and return the click Result."""
    return CliRunner().invoke(certs_cli, list(args), env=env)


def test_cli_init_issue_list_revoke_crl_check(tmp_path: Path) -> None:
    """The commands chain as an operator would use them, each printing what it wrote."""
    ca, out = tmp_path / "ca", tmp_path / "out"
    result = run("init-ca", "--name", "XA CA", "--out", str(ca))
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(ca / "ca.key"), str(ca / "ca.pem"), str(ca / "index.json")]

    result = run("issue", "--ca", str(ca), "--kind", "tls-server", "--name", "gw.xa.test",
                 "--san", "gw.xa.test", "--san", "127.0.0.1", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(out / "gw.xa.test.pem") in result.stdout.split()
    serial = pem.serial_hex(pem.load_cert(out / "gw.xa.test.pem").serial_number)

    result = run("issue", "--ca", str(ca), "--kind", "signing", "--name", "soon", "--days", "5",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output

    result = run("list", str(out))
    assert result.exit_code == 0, result.output
    lines = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert lines["CN=gw.xa.test"][1:3] == [serial, "tls-server"]
    assert lines["CN=soon"][-1] == "EXPIRING" and lines["CN=soon"][4] in {"4d", "5d"}

    result = run("revoke", "--ca", str(ca), serial.lower(), "--reason", "keyCompromise")
    assert result.exit_code == 0 and result.stdout.split() == [str(ca / "index.json")]

    result = run("crl", "--ca", str(ca), "--out", str(tmp_path / "crl.pem"))
    assert result.exit_code == 0 and str(tmp_path / "crl.pem") in result.stdout.split()

    result = run("check", str(out / "soon.pem"), str(out / "soon.key"), "--ca", str(ca))
    assert result.exit_code == 0 and "warning" in result.stderr

    result = run("check", str(out / "gw.xa.test.pem"), str(out / "gw.xa.test.key"), "--ca", str(ca))
    assert result.exit_code == 1 and "revoked" in result.stderr


def test_cli_check_prints_one_line_per_problem(ca_dir: Path, out: Path) -> None:
    """check exits 1 with one 'problem:' line for each problem found."""
    _, cert_path, _ = issue_one(
        ca_dir, out, name="a", not_before=NOW - dt.timedelta(days=50), days=1
    )
    _, _, other_key = issue_one(ca_dir, out, name="b")
    other_key.chmod(0o644)
    result = run("check", str(cert_path), str(other_key))
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, result.stderr
    assert result.stdout == ""


def test_cli_passphrase_env_encrypts_and_missing_variable_is_usage(tmp_path: Path) -> None:
    """--passphrase-env reads the variable; an unset variable is a usage error (exit 2)."""
    ca = tmp_path / "ca"
    result = run("init-ca", "--name", "CA", "--out", str(ca), "--passphrase-env", "CA_PW",
                 env={"CA_PW": "pw-1"})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert b"ENCRYPTED" in (ca / "ca.key").read_bytes()
    args = ["issue", "--ca", str(ca), "--kind", "operator", "--name", "op", "--out", str(tmp_path)]
    result = run(*args, "--ca-passphrase-env", "NOT_SET_ANYWHERE")
    assert result.exit_code == 2 and "NOT_SET_ANYWHERE" in result.stderr
    result = run(*args, "--ca-passphrase-env", "CA_PW", env={"CA_PW": "pw-1"})
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["issue", "--kind", "signing", "--name", "x", "--out", "o"],  # no --ca
        ["list", "--config", "{ca}/missing.toml"],
        ["revoke", "--ca", "{ca}", "ABCD", "--reason", "keyCompromise"],
        ["revoke", "--ca", "{ca}", "zz", "--reason", "keyCompromise"],
        ["init-ca", "--name", "again", "--out", "{ca}"],
    ],
)
def test_cli_usage_and_config_errors_exit_2_with_one_line(ca_dir: Path, args: list[str]) -> None:
    """Usage and configuration errors exit 2 and say why on stderr, without a traceback."""
    result = run(*[a.format(ca=ca_dir) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.strip()


def test_cli_rotate_prints_both_pins_and_the_next_step(ca_dir: Path, out: Path) -> None:
    """rotate prints the files written, the old and new pins, and tells the operator to publish."""
    old, _, _ = issue_one(ca_dir, out, "signing", "sig")
    result = run("rotate", "--ca", str(ca_dir), "--name", "sig", "--out", str(out),
                 "--overlap-days", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    new_pem = next(p for p in result.stdout.split() if p.endswith(".pem"))
    assert pem.spki_pin(old) in result.stderr
    assert pem.spki_pin(pem.load_cert(Path(new_pem))) in result.stderr
    assert "publish" in result.stderr


def test_cli_import_partner_writes_the_partner_file(partner: Path) -> None:
    """import-partner writes ID.toml and the copied CA and prints their paths."""
    dest = partner / "partners"
    result = run("import-partner", "--id", "XB", "--ca", str(partner / "xb-ca" / "ca.pem"),
                 "--tls-cert", str(partner / "xb" / "gw.xb.test.pem"),
                 "--signing-cert", str(partner / "xb" / "xb-sig.pem"),
                 "--url", "https://127.0.0.1:8444", "--out", str(dest))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(dest / "XB.toml") in result.stdout.split()
    assert str(dest / "certs" / "XB-ca.pem") in result.stdout.split()
    assert len(tomllib.loads((dest / "XB.toml").read_text())["tls_pins"]) == 1


def write_config(root: Path) -> Path:
    """A gateway XA config (own CA, TLS and signing certs) with partner XB imported; its path."""
    own, partner = root / "certs", root / "xb"
    authority.init_ca("XA CA", own / "ca")
    for kind, name in [("tls-server", "server"), ("tls-client", "client"), ("signing", "sig")]:
        authority.issue(own / "ca", kind, name, own)
    authority.init_ca("XB CA", partner / "ca")
    authority.issue(partner / "ca", "signing", "xb-sig", partner, days=10)
    authority.issue(partner / "ca", "tls-client", "xb-client", partner)
    partner_import.import_partner(
        "XB",
        partner / "ca" / "ca.pem",
        root / "config" / "partners",
        tls_certs=[partner / "xb-client.pem"],
        signing_certs=[partner / "xb-sig.pem"],
        url="https://127.0.0.1:8444",
    )
    config = root / "config" / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "XA"\n\n[tls]\nca = "../certs/ca/ca.pem"\n'
        'server_cert = "../certs/server.pem"\nserver_key = "../certs/server.key"\n'
        'client_cert = "../certs/client.pem"\nclient_key = "../certs/client.key"\n\n'
        '[signing]\ncert = "../certs/sig.pem"\nkey = "../certs/sig.key"\n'
    )
    return config


def test_imported_partner_file_is_accepted_by_the_config_loader(tmp_path: Path) -> None:
    """The loader reads import-partner's TOML: the CA, pins and signing certs it names."""
    from gateway.config.files import load_settings

    settings = load_settings(write_config(tmp_path))
    xb = settings.partners["XB"]
    assert pem.load_cert(xb.ca) == pem.load_cert(tmp_path / "xb" / "ca" / "ca.pem")
    assert xb.tls_pins == (pem.spki_pin(pem.load_cert(tmp_path / "xb" / "xb-client.pem")),)
    assert [pem.load_cert(p) for p in xb.signing_certs] == [
        pem.load_cert(tmp_path / "xb" / "xb-sig.pem")
    ]
    assert xb.crl is None


def test_cli_list_config_lists_own_and_partner_certificates(tmp_path: Path) -> None:
    """list --config shows the gateway's own certificates and the partners', flagging expiry."""
    config = write_config(tmp_path)
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    assert sorted(rows) == sorted(
        ["CN=XA CA", "CN=server", "CN=client", "CN=sig", "CN=XB CA", "CN=xb-sig"]
    )
    assert rows["CN=xb-sig"][2] == "signing" and rows["CN=xb-sig"][-1] == "EXPIRING"
    assert rows["CN=server"][2] == "tls-server" and rows["CN=server"][-1] != "EXPIRING"


def test_cli_list_without_arguments_reads_maagw_config(tmp_path: Path) -> None:
    """With neither --config nor DIR, list reads the configuration named by $MAAGW_CONFIG."""
    config = write_config(tmp_path)
    result = run("list", env={"MAAGW_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 6


def test_rotate_with_config_is_an_audited_operator_action(tmp_path: Path) -> None:
    """`certs rotate --config` records the rotation, with its actor and pins, in the gateway's audit log."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings
    from gateway.demo import provision

    prov = provision(tmp_path / "gw", "amqp://guest:guest@127.0.0.1:5672/", ids=("XA", "XB"))
    config = prov["XA"].config
    base = config.parent
    result = CliRunner().invoke(
        certs_cli,
        [
            "rotate",
            "--ca",
            str(base / "ca"),
            "--name",
            "signing",
            "--out",
            str(base / "certs"),
            "--config",
            str(config),
            "--actor",
            "op:bob",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = load_settings(config)

    async def entries() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.search(event="operator_action")
        finally:
            await audit.close()

    found = asyncio.run(entries())
    assert [(e.code, e.actor) for e in found] == [("CERT_ROTATED", "op:bob")]
    assert found[0].details_obj()["old_pin"] != found[0].details_obj()["new_pin"]


def _xb_crl(root: Path, **kw: object) -> Path:
    """Give XB's partner file (from write_config) a CRL of XB's CA; the CRL's path."""
    crl = root / "config" / "partners" / "certs" / "XB-crl.pem"
    authority.make_crl(root / "xb" / "ca", crl, **kw)  # type: ignore[arg-type]
    toml = root / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text().replace('crl = ""', 'crl = "certs/XB-crl.pem"'))
    return crl


@pytest.mark.parametrize(("next_update_days", "flag"), [(7, ""), (1, "EXPIRING")])
def test_cli_list_config_shows_partner_crls_with_next_update(
    tmp_path: Path, next_update_days: int, flag: str
) -> None:
    """list --config has a line per partner CRL: issuer, CRL number, crl, nextUpdate, days left, file, flag."""
    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path, next_update_days=next_update_days)
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    [row] = [line.split("\t") for line in result.stdout.splitlines() if "\tcrl\t" in line]
    assert row[:3] == ["CN=XB CA", "01", "crl"]
    assert row[4] == f"{next_update_days - 1}d" and Path(row[5]) == crl
    assert (row[6] if len(row) > 6 else "") == flag


def test_cli_list_dir_shows_a_stale_crl(ca_dir: Path, out: Path) -> None:
    """list DIR includes CRL files and flags one past its nextUpdate STALE."""
    issue_one(ca_dir, out)
    authority.make_crl(ca_dir, out / "ca.crl", now=NOW - dt.timedelta(days=10), next_update_days=1)
    result = run("list", str(out))
    assert result.exit_code == 0, result.output
    [row] = [line.split("\t") for line in result.stdout.splitlines() if "\tcrl\t" in line]
    assert row[-1] == "STALE" and row[-2] == str(out / "ca.crl")


class _CrlHttp:
    """A stdlib HTTP server in a thread answering every GET with ``body`` (for CLI tests)."""

    def __init__(self) -> None:
        import http.server
        import threading

        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)

            def log_message(self, *args: object) -> None:
                pass

        self.body = b""
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/xb.crl"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crl_http() -> Iterator[_CrlHttp]:
    server = _CrlHttp()
    yield server
    server.close()


def test_cli_fetch_crl_replaces_a_stale_crl_and_is_audited(
    tmp_path: Path, crl_http: _CrlHttp
) -> None:
    """fetch-crl writes a fresh CRL over a stale one (which the gateway would refuse to load) and audits it."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings

    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path, now=NOW - dt.timedelta(days=10), next_update_days=1)
    toml = tmp_path / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text() + f'crl_url = "{crl_http.url}"\n')
    fresh = tmp_path / "fresh.pem"
    authority.make_crl(tmp_path / "xb" / "ca", fresh)
    crl_http.body = fresh.read_bytes()
    result = run("fetch-crl", "--config", str(config), "--actor", "op:carol")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(crl)] and crl.read_bytes() == fresh.read_bytes()
    assert "XB: CRL number 2" in result.stderr
    settings = load_settings(config)

    async def actions() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.search(event="operator_action")
        finally:
            await audit.close()

    [entry] = asyncio.run(actions())
    assert (entry.code, entry.partner, entry.actor) == ("CRL_FETCHED", "XB", "op:carol")


def test_cli_fetch_crl_keeps_the_file_and_exits_1_when_the_answer_is_unusable(
    tmp_path: Path, crl_http: _CrlHttp
) -> None:
    """An unusable answer leaves the CRL file untouched, says why on stderr and exits 1."""
    config = write_config(tmp_path)
    crl = _xb_crl(tmp_path)
    before = crl.read_bytes()
    toml = tmp_path / "config" / "partners" / "XB.toml"
    toml.write_text(toml.read_text() + f'crl_url = "{crl_http.url}"\n')
    crl_http.body = b"<html>not a CRL</html>"
    result = run("fetch-crl", "--config", str(config))
    assert result.exit_code == 1
    assert "CRL_FETCH_CORRUPT" in result.stderr and crl.read_bytes() == before


def test_cli_rotate_finds_the_configuration_and_lists_partners_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, rotate uses config/gateway.toml of the working directory, records the certificate and lists partners."""
    import asyncio

    from gateway.audit.log import AuditLog
    from gateway.config.files import load_settings

    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAAGW_CONFIG", raising=False)
    result = run("rotate", "--ca", str(tmp_path / "certs" / "ca"), "--name", "sig",
                 "--out", str(tmp_path / "certs"))  # fmt: skip
    assert result.exit_code == 0, result.output
    new = pem.load_cert(next(Path(p) for p in result.stdout.split() if p.endswith(".pem")))
    assert f"cert_sha256={pem.cert_sha256(new)}" in result.stderr
    assert f"serial={pem.serial_hex(new.serial_number)}" in result.stderr
    assert "recorded: the new signing certificate in the audit log of XA" in result.stderr
    assert (
        "XB (https://127.0.0.1:8444): maagw certs import-partner --id XA --ca ca.pem"
        in result.stderr
    )
    settings = load_settings(config)

    async def recorded() -> list:  # type: ignore[type-arg]
        audit = await AuditLog.open(settings.audit_url, gateway_id="XA")
        try:
            return await audit.cert_records()
        finally:
            await audit.close()

    shas = [r.sha256 for r in asyncio.run(recorded())]
    assert shas == [
        pem.cert_sha256(pem.load_cert(tmp_path / "certs" / "sig.pem")),
        pem.cert_sha256(new),
    ]


def test_cli_rotate_says_when_it_could_not_record(
    ca_dir: Path, out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no configuration to find, rotate still rotates and says plainly that nothing was recorded."""
    issue_one(ca_dir, out, "signing", "sig")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAAGW_CONFIG", raising=False)
    result = run("rotate", "--ca", str(ca_dir), "--name", "sig", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "not recorded in an audit log: no configuration at config/gateway.toml" in result.stderr


def test_cli_rotate_refuses_a_configuration_of_another_certificate(
    tmp_path: Path, ca_dir: Path, out: Path
) -> None:
    """An explicit --config whose signing certificate is not the one rotated is refused before anything is issued."""
    config = write_config(tmp_path / "gw")
    issue_one(ca_dir, out, "signing", "other")
    result = run(
        "rotate", "--ca", str(ca_dir), "--name", "other", "--out", str(out), "--config", str(config)
    )
    assert result.exit_code == 2 and "CONFIG_ROTATION_MISMATCH" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other.key", "other.pem"]
