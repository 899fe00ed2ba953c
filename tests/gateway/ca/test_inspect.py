"""Tests for gateway/ca/inspect.py: checking a certificate and key pair, expiry reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel

from gateway import pem
from gateway.ca import authority, inspect
from maagw_testing.pki import NOW, forge_leaf, issue_one

pytestmark = pytest.mark.usefixtures("logs")


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


def test_expiry_report_gives_path_subject_and_days_left(ca_dir: Path, out: Path) -> None:
    """expiry_report has one row per certificate, bundles included."""
    _, a, _ = issue_one(ca_dir, out, name="a", not_before=NOW, days=5)
    rows = inspect.expiry_report([a, ca_dir / "ca.pem"], NOW)
    assert rows[0] == (a, "CN=a", 5)
    assert rows[1][1] == "CN=Test CA,O=XA" and rows[1][2] >= 3649


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
