"""Tests for gateway/ca/rotation.py: a dated successor beside the current certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway import pem
from gateway.ca.rotation import rotate
from gateway.errors import ConfigError
from maagw_testing.pki import NOW, issue_one, mode_of

pytestmark = pytest.mark.usefixtures("logs")


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
