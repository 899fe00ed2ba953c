"""Rotation of the signing certificate: a successor beside the old one, with an overlap."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.ca.authority import KeyType, issue, log
from gateway.errors import ConfigError, ErrorCode
from gateway.pem import _now, load_cert, spki_pin

# --------------------------------------------------------------------------- rotate


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate` did: the old and new certificates and their pins."""

    old_cert: Path
    new_cert: Path
    new_key: Path
    old_pin: str
    new_pin: str
    overlap_until: dt.datetime
    written: list[Path]


def _signing_candidates(out: Path, name: str) -> list[Path]:
    return [out / f"{name}.pem", *Path(out).glob(f"{name}-*.pem")]


def is_signing_family(cert_path: Path, out: Path, name: str) -> bool:
    """True when ``cert_path`` holds the same certificate as NAME.pem or a NAME-*.pem in ``out``."""
    try:
        cert = load_cert(cert_path)
    except ConfigError:
        return False
    for path in _signing_candidates(out, name):
        with contextlib.suppress(ConfigError):
            if path.is_file() and load_cert(path) == cert:
                return True
    return False


def _current_signing_cert(out: Path, name: str) -> Path:
    candidates = _signing_candidates(out, name)
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        raise ConfigError(
            f"no signing certificate {name}.pem (or {name}-<date>.pem) in {out} to rotate",
            code=ErrorCode.CONFIG_CERT_MISSING,
        )
    return max(existing, key=lambda p: load_cert(p).not_valid_before_utc)


def rotate(
    ca_dir: Path,
    name: str,
    out: Path,
    *,
    overlap_days: int = 30,
    days: int = 397,
    key_type: KeyType = "ec",
    passphrase: bytes | None = None,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> Rotation:
    """Issue a successor signing certificate ``NAME-<YYYYMMDD>.pem/.key`` next to the old one.

    The old certificate is the newest of ``NAME.pem`` and ``NAME-*.pem`` in
    ``out``; it is left untouched. Partners must accept both until
    ``overlap_until``; then the old one is retired (``revoke --reason superseded``).
    """
    out = Path(out)
    old_path = _current_signing_cert(out, name)
    old = load_cert(old_path)
    now = now or _now()
    stem = f"{name}-{now:%Y%m%d}"
    suffix = 1
    new_name = stem
    while (out / f"{new_name}.pem").exists() or (out / f"{new_name}.key").exists():
        suffix += 1
        new_name = f"{stem}-{suffix}"
    written = issue(
        ca_dir,
        "signing",
        new_name,
        out,
        days=days,
        key_type=key_type,
        passphrase=passphrase,
        ca_passphrase=ca_passphrase,
        org=_org(old),
    )
    new_key, new_cert = written[0], written[1]
    overlap_until = min(now + dt.timedelta(days=overlap_days), old.not_valid_after_utc)
    log.info(
        "signing_cert_rotated", old=str(old_path), new=str(new_cert), overlap_days=overlap_days
    )
    return Rotation(
        old_cert=old_path,
        new_cert=new_cert,
        new_key=new_key,
        old_pin=spki_pin(old),
        new_pin=spki_pin(load_cert(new_cert)),
        overlap_until=overlap_until,
        written=written,
    )


def _org(cert: x509.Certificate) -> str | None:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None
