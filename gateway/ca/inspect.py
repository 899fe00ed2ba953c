"""What an operator sees of certificates and CRLs: descriptions, expiry, key and chain checks."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
)

from gateway.ca.authority import (
    ALLOWED_CURVES,
    CA_CERT,
    MIN_RSA_BITS,
    _index_path,
    read_index,
)
from gateway.errors import ConfigError
from gateway.pem import (
    _CERT_SUFFIXES,
    _directly_issued_by,
    _holds,
    _holds_cert,
    _now,
    cert_kind,
    days_to_expiry,
    load_cert,
    load_certs,
    load_crl,
    load_private_key,
    public_key_pin,
    serial_hex,
    spki_pin,
    subject_text,
)

#: Certificates with fewer days left than this are flagged by ``list``.
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class CertInfo:
    """One line of ``maagw certs list``."""

    path: Path
    subject: str
    serial: str
    kind: str
    not_after: dt.datetime
    days_left: int
    pin: str

    @property
    def expiring(self) -> bool:
        """True when fewer than :data:`EXPIRY_WARNING_DAYS` days are left."""
        return self.days_left < EXPIRY_WARNING_DAYS


def describe(paths: Iterable[Path], now: dt.datetime | None = None) -> list[CertInfo]:
    """Describe every certificate in the given PEM files (bundles give one row each)."""
    now = now or _now()
    rows = []
    for path in paths:
        for cert in load_certs(Path(path)):
            rows.append(
                CertInfo(
                    path=Path(path),
                    subject=subject_text(cert),
                    serial=serial_hex(cert.serial_number),
                    kind=cert_kind(cert),
                    not_after=cert.not_valid_after_utc,
                    days_left=days_to_expiry(cert, now),
                    pin=spki_pin(cert),
                )
            )
    return rows


#: Days before a CRL's nextUpdate from which ``list`` flags it (``[crl] warning_days``).
CRL_WARNING_DAYS = 2.0


@dataclass(frozen=True)
class CrlInfo:
    """One CRL line of ``maagw certs list``: issuer, CRL number, nextUpdate, time left."""

    path: Path
    issuer: str
    number: str
    next_update: dt.datetime | None
    days_left: int | None
    #: ``STALE`` past nextUpdate, ``EXPIRING`` within the warning horizon, else ``""``
    flag: str


def describe_crls(
    paths: Iterable[Path], now: dt.datetime | None = None, warning_days: float = CRL_WARNING_DAYS
) -> list[CrlInfo]:
    """Describe every CRL file in ``paths`` (the number in hex, as openssl prints it)."""
    now = now or _now()
    rows = []
    for path in paths:
        crl = load_crl(Path(path))
        next_update = crl.next_update_utc
        try:
            number = serial_hex(
                crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            )
        except x509.ExtensionNotFound:
            number = "-"
        flag = ""
        if next_update is not None and next_update < now:
            flag = "STALE"
        elif next_update is not None and next_update - now <= dt.timedelta(days=warning_days):
            flag = "EXPIRING"
        rows.append(
            CrlInfo(
                path=Path(path),
                issuer=crl.issuer.rfc4514_string(),
                number=number,
                next_update=next_update,
                days_left=(next_update - now) // dt.timedelta(days=1) if next_update else None,
                flag=flag,
            )
        )
    return rows


def crl_files(directory: Path) -> list[Path]:
    """The files under ``directory`` that hold a CRL (PEM, or DER named ``*.crl``), sorted."""
    found = []
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix == ".crl" or (
            suffix in _CERT_SUFFIXES and _holds(path, b"-----BEGIN X509 CRL-----")
        ):
            found.append(path)
    return found


def configured_crl_paths(settings: Any) -> list[Path]:
    """The partners' CRL files a settings object names (``partners.<ID>.crl``)."""
    partners = getattr(settings, "partners", {}) or {}
    return sorted({Path(p.crl) for p in partners.values() if getattr(p, "crl", None)})


def expiry_report(
    paths: Iterable[Path], now: dt.datetime | None = None
) -> list[tuple[Path, str, int]]:
    """Return ``(path, subject, days_left)`` for every certificate in ``paths``."""
    return [(row.path, row.subject, row.days_left) for row in describe(paths, now)]


def configured_cert_paths(settings: Any, base: Path | None = None) -> list[Path]:
    """Collect the certificate files named anywhere in a settings object.

    Walks a pydantic model (or nested dicts/lists) and keeps every path or
    string ending in ``.pem``/``.crt``/``.cer`` that names an existing file
    holding a certificate (private keys and CRLs are skipped). Relative paths
    are tried against ``base``. Used by ``list --config`` and the expiry watch
    without depending on the exact shape of ``Settings``.
    """
    if hasattr(settings, "model_dump"):
        settings = settings.model_dump()
    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)
        elif isinstance(value, str | Path) and str(value).lower().endswith(_CERT_SUFFIXES):
            path = Path(value)
            if not path.is_absolute() and base is not None and not path.exists():
                path = base / path
            if path.is_file() and _holds_cert(path):
                found.append(path)

    walk(settings)
    return sorted({p.resolve() for p in found})


# --------------------------------------------------------------------------- check


@dataclass
class CheckResult:
    """Problems (refusals) and warnings found by :func:`check`."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings allowed)."""
        return not self.problems


def key_strength_problem(key: CertificatePublicKeyTypes) -> str | None:
    """Return why ``key`` is too weak or unsupported, or None when acceptable."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"RSA key of {key.key_size} bits is under the minimum of {MIN_RSA_BITS}"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            return f"curve {key.curve.name} is not supported (P-256, P-384, P-521)"
        return None
    return f"key type {type(key).__name__} is not supported (ECDSA or RSA)"


def _ca_cert_path(ca: Path) -> Path:
    ca = Path(ca)
    return ca / CA_CERT if ca.is_dir() else ca


def check(
    cert_path: Path,
    key_path: Path,
    *,
    ca: Path | None = None,
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> CheckResult:
    """Check a certificate and its key; every refusal is one line in ``problems``.

    Checks: the key file's mode is 0600 or stricter; the key loads and matches
    the certificate; key strength (RSA >= 2048 bits, curves P-256/384/521);
    validity window; and, given ``ca`` (a CA directory or a CA certificate
    file), that the certificate is directly issued by it, the CA itself is
    valid, and (for a CA directory) that its index does not list it revoked.
    Fewer than 30 days left is a warning.
    """
    now = now or _now()
    result = CheckResult()
    try:
        cert = load_cert(Path(cert_path))
    except ConfigError as exc:
        result.problems.append(exc.reason)
        return result

    try:
        mode = stat.S_IMODE(os.stat(key_path).st_mode)
        if mode & 0o077:
            result.problems.append(
                f"key file {key_path} has mode {mode:04o}; it must be 0600 or stricter"
            )
    except OSError as exc:
        result.problems.append(f"cannot stat key file {key_path}: {exc.strerror}")

    try:
        key = load_private_key(Path(key_path), passphrase)
    except ConfigError as exc:
        result.problems.append(exc.reason)
    else:
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            result.problems.append(f"key type {type(key).__name__} is not supported (ECDSA or RSA)")
        elif public_key_pin(key.public_key()) != spki_pin(cert):
            result.problems.append(f"key {key_path} does not match certificate {cert_path}")

    weak = key_strength_problem(cert.public_key())
    if weak:
        result.problems.append(f"certificate {cert_path}: {weak}")

    if cert.not_valid_before_utc > now:
        result.problems.append(
            f"certificate {cert_path} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
        )
    left = days_to_expiry(cert, now)
    if cert.not_valid_after_utc <= now:
        result.problems.append(
            f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        )
    elif left < EXPIRY_WARNING_DAYS:
        result.warnings.append(f"certificate {cert_path} expires in {left} days")

    if ca is not None:
        _check_chain(cert, Path(ca), now, result)
    return result


def _check_chain(cert: x509.Certificate, ca: Path, now: dt.datetime, result: CheckResult) -> None:
    try:
        ca_certs = load_certs(_ca_cert_path(ca))
    except ConfigError as exc:
        result.problems.append(exc.reason)
        return
    ca_cert = next((c for c in ca_certs if _directly_issued_by(cert, c)), None)
    if ca_cert is None:
        result.problems.append(
            f"certificate is not issued by the CA {subject_text(ca_certs[0])} ({_ca_cert_path(ca)})"
        )
        return
    if not (ca_cert.not_valid_before_utc <= now < ca_cert.not_valid_after_utc):
        result.problems.append(f"CA certificate {_ca_cert_path(ca)} is outside its validity period")
    if ca.is_dir() and _index_path(ca).exists():
        entry = read_index(ca)["certs"].get(serial_hex(cert.serial_number))
        if entry and entry.get("revoked"):
            revoked = entry["revoked"]
            result.problems.append(
                f"certificate serial {serial_hex(cert.serial_number)} is revoked "
                f"({revoked['reason']}, {revoked['time']})"
            )
