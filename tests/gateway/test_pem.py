"""Tests for gateway/pem.py: reading and writing PEM, pins, serial numbers, expiry."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway import pem
from gateway.ca import authority
from gateway.errors import ConfigError
from maagw_testing.pki import NOW, issue_one

pytestmark = pytest.mark.usefixtures("logs")


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


def test_days_to_expiry_counts_whole_days_and_goes_negative(ca_dir: Path, out: Path) -> None:
    """days_to_expiry is floor((not_after - now) / 1 day), negative once expired."""
    cert, _, _ = issue_one(ca_dir, out, not_before=NOW, days=10)
    assert pem.days_to_expiry(cert, NOW) == 10
    assert pem.days_to_expiry(cert, NOW + dt.timedelta(days=9, hours=23)) == 0
    assert pem.days_to_expiry(cert, NOW + dt.timedelta(days=11)) == -1


def test_pem_files_skips_keys_and_crls(ca_dir: Path, out: Path) -> None:
    """Only files holding certificates are listed from a directory."""
    issue_one(ca_dir, out, name="a")
    authority.make_crl(ca_dir, out / "crl.pem")
    (out / "a.key").rename(out / "a-key.pem")
    assert pem.pem_files(out) == [out / "a.pem"]
