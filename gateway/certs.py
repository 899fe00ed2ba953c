"""The operator's certificate toolkit: CA, issue, revoke, CRL, check, rotate, import.

Plain functions over the ``cryptography`` library; ``gateway.cli_certs`` puts the
``maagw certs`` commands on top of them, and the TLS and signing code import the
loading helpers (:func:`load_cert`, :func:`load_private_key`, :func:`spki_pin`).

A CA directory holds::

    ca.pem       the CA certificate
    ca.key       its private key (mode 0600, optionally passphrase-encrypted)
    index.json   every certificate the CA issued: serial (hex) -> subject, kind,
                 not_after, revocation; and the number of the last CRL

Keys are ECDSA P-256 by default, RSA-3072 on request. Private keys are written
atomically with mode 0600 from the first byte (``os.open(..., 0o600)``), never
widened afterwards. Serial numbers are random 159-bit integers, printed in hex
the way ``openssl x509 -serial`` prints them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError

log = structlog.get_logger(__name__)

KeyType = Literal["ec", "rsa"]

#: The kinds of leaf certificate :func:`issue` makes.
KINDS = ("tls-server", "tls-client", "signing", "operator")

#: Organizational unit that marks an operator certificate (the admin listener
#: tells an operator from the gateway's own TLS client certificate by it).
OPERATOR_OU = "operator"

#: Curves :func:`check` accepts; anything else is refused.
ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
#: Smallest RSA modulus :func:`check` accepts.
MIN_RSA_BITS = 2048
#: RSA modulus of keys this module generates.
RSA_BITS = 3072
#: Certificates with fewer days left than this are flagged by ``list``.
EXPIRY_WARNING_DAYS = 30

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
INDEX = "index.json"

#: RFC 5280 CRLReason names (case-insensitive on input) -> reason flag.
REASONS: dict[str, x509.ReasonFlags] = {flag.value.lower(): flag for flag in x509.ReasonFlags}
# removeFromCRL only makes sense in delta CRLs, which this toolkit does not publish.
REMOVE_FROM_CRL = x509.ReasonFlags.remove_from_crl
#: Partner ids as gateway.config accepts them (``XB``, ``XB-CUSTOMS``).
PARTNER_ID_PATTERN = r"[A-Z]{2}[A-Z0-9-]{0,14}"
#: Files that may hold certificates.
_CERT_SUFFIXES = (".pem", ".crt", ".cer")

# Backdating absorbs clock skew between the issuer and the verifier.
_BACKDATE = dt.timedelta(minutes=5)


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def serial_hex(serial: int) -> str:
    """Return ``serial`` in upper-case hex, even length, as openssl prints it."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str | int) -> int:
    """Parse a serial given in hex (any case, colons or spaces allowed, optional 0x)."""
    if isinstance(text, int):
        return text
    cleaned = re.sub(r"[\s:]", "", text.strip())
    if cleaned.lower().startswith("serial="):
        cleaned = cleaned[len("serial=") :]
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned or not re.fullmatch(r"[0-9a-fA-F]+", cleaned):
        raise ConfigError(f"not a hex serial number: {text!r}", code="CONFIG_CERT_SERIAL")
    return int(cleaned, 16)


def spki_pin(cert: x509.Certificate) -> str:
    """Return ``sha256:`` + hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    return public_key_pin(cert.public_key())


def cert_sha256(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER: its fingerprint (not an SPKI pin).

    ``openssl x509 -noout -fingerprint -sha256`` prints the same digits in upper
    case with colons.
    """
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_labels(cert: x509.Certificate) -> str:
    """``serial=… cert_sha256=… spki_pin=sha256:…``: how the CLI names a certificate."""
    return (
        f"serial={serial_hex(cert.serial_number)} cert_sha256={cert_sha256(cert)} "
        f"spki_pin={spki_pin(cert)}"
    )


def public_key_pin(key: CertificatePublicKeyTypes) -> str:
    """Return the SPKI pin (``sha256:<hex>``) of a public key."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def subject_text(cert: x509.Certificate) -> str:
    """Return the subject as an RFC 4514 string (``CN=gw.xa.test,O=XA``)."""
    return cert.subject.rfc4514_string()


def days_to_expiry(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    """Return whole days until ``cert`` expires (negative once it has)."""
    now = now or _now()
    return (cert.not_valid_after_utc - now) // dt.timedelta(days=1)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a same-directory temporary file.

    The temporary file is created with ``mode`` so that a private key is never
    readable by others, not even for an instant.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widen beyond mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_private_key(path: Path, key: PrivateKeyTypes, passphrase: bytes | None = None) -> Path:
    """Write ``key`` as PKCS#8 PEM with mode 0600, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_atomic(path, pem, 0o600)
    return path


def write_cert(path: Path, *certs: x509.Certificate) -> Path:
    """Write one or more certificates as PEM (mode 0644)."""
    _write_atomic(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644)
    return path


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror}", code="CONFIG_FILE", path=str(path)
        ) from exc


def load_certs(path: Path) -> list[x509.Certificate]:
    """Load every certificate from a PEM file (a bundle or a single one)."""
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(
            f"not a PEM certificate file: {path}", code="CONFIG_CERT", path=str(path)
        ) from exc
    return certs


def load_cert(path: Path) -> x509.Certificate:
    """Load the first certificate from a PEM file."""
    return load_certs(path)[0]


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKeyTypes:
    """Load a PEM private key, decrypting it with ``passphrase`` when encrypted."""
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:
        # cryptography says "Password was not given but private key is encrypted" or the reverse
        raise ConfigError(
            f"private key {path}: {exc}", code="CONFIG_KEY_PASSPHRASE", path=str(path)
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"cannot load private key {path} (not a PEM key, or wrong passphrase)",
            code="CONFIG_KEY",
            path=str(path),
        ) from exc


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Load a CRL in PEM or DER form."""
    data = _read(path, "CRL")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"not a CRL: {path}", code="CONFIG_CRL", path=str(path)) from exc


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> Path:
    """Write a CRL as PEM (mode 0644), atomically: a reader sees the old or the new one."""
    _write_atomic(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return Path(path)


def generate_key(key_type: KeyType = "ec") -> CertificateIssuerPrivateKeyTypes:
    """Generate an ECDSA P-256 key (``"ec"``) or an RSA-3072 key (``"rsa"``)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ConfigError(f"unknown key type {key_type!r} (ec or rsa)", code="CONFIG_KEY_TYPE")


def _name(common_name: str, org: str | None = None, unit: str | None = None) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        value = san.strip()
        if value.lower().startswith(("dns:", "ip:")):
            prefix, _, value = value.partition(":")
            if prefix.lower() == "dns":
                names.append(x509.DNSName(value))
                continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            if not value:
                raise ConfigError(
                    "empty subject alternative name", code="CONFIG_CERT_SAN"
                ) from None
            names.append(x509.DNSName(value))
    return names


# --------------------------------------------------------------------------- the CA index


def _index_path(ca_dir: Path) -> Path:
    return Path(ca_dir) / INDEX


def read_index(ca_dir: Path) -> dict[str, Any]:
    """Return the CA's index (``{"crl_number": n, "certs": {serial: {...}}}``)."""
    path = _index_path(ca_dir)
    if not path.exists():
        return {"crl_number": 0, "certs": {}}
    try:
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CA index {path}", code="CONFIG_CA_INDEX") from exc
    data.setdefault("crl_number", 0)
    data.setdefault("certs", {})
    return data


def _write_index(ca_dir: Path, index: Mapping[str, Any]) -> Path:
    path = _index_path(ca_dir)
    _write_atomic(path, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), 0o600)
    return path


@dataclass(frozen=True)
class CA:
    """A loaded certificate authority: its certificate, key and directory."""

    directory: Path
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


def load_ca(ca_dir: Path, passphrase: bytes | None = None) -> CA:
    """Load ``ca.pem`` and ``ca.key`` from a CA directory made by :func:`init_ca`."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_CERT).exists():
        raise ConfigError(
            f"{ca_dir} is not a CA directory (no {CA_CERT}); create one with `maagw certs init-ca`",
            code="CONFIG_CA",
            path=str(ca_dir),
        )
    cert = load_cert(ca_dir / CA_CERT)
    key = load_private_key(ca_dir / CA_KEY, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"unsupported CA key type in {ca_dir / CA_KEY}", code="CONFIG_CA")
    if public_key_pin(key.public_key()) != spki_pin(cert):
        raise ConfigError(f"{CA_KEY} does not match {CA_CERT} in {ca_dir}", code="CONFIG_CA")
    return CA(ca_dir, cert, key)


def _hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 384:
        return hashes.SHA512()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


# --------------------------------------------------------------------------- init-ca / issue


def init_ca(
    name: str,
    out: Path,
    *,
    key_type: KeyType = "ec",
    days: int = 3650,
    passphrase: bytes | None = None,
    org: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Create a CA in ``out``: ``ca.pem``, ``ca.key`` (0600) and an empty ``index.json``.

    Refuses (``ConfigError``) to replace an existing CA key unless ``overwrite``:
    losing it means losing the ability to revoke what it issued.
    """
    out = Path(out)
    if (out / CA_KEY).exists() and not overwrite:
        raise ConfigError(
            f"{out / CA_KEY} already exists; refusing to replace a CA",
            code="CONFIG_CA_EXISTS",
            path=str(out),
        )
    if days < 1:
        raise ConfigError("a CA needs --days of at least 1", code="CONFIG_CERT_DAYS")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_key(key_type)
    subject = _name(name, org)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _hash_for(key))
    )
    written = [
        write_private_key(out / CA_KEY, key, passphrase),
        write_cert(out / CA_CERT, cert),
        _write_index(out, {"crl_number": 0, "certs": {}}),
    ]
    log.info("ca_created", subject=subject_text(cert), directory=str(out), key_type=key_type)
    return written


def _key_usage(kind: str, is_rsa: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=kind == "signing",
        key_encipherment=kind == "tls-server" and is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_EKU = {
    "tls-server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "tls-client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "operator": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


def issue(
    ca_dir: Path,
    kind: str,
    name: str,
    out: Path,
    *,
    sans: Sequence[str] = (),
    days: int = 397,
    key_type: KeyType = "ec",
    passphrase: bytes | None = None,
    not_before: dt.datetime | None = None,
    ca_passphrase: bytes | None = None,
    org: str | None = None,
    crl_url: str | None = None,
) -> list[Path]:
    """Issue a ``kind`` certificate for ``name``; write ``out/NAME.pem`` and ``out/NAME.key``.

    ``passphrase`` encrypts the new key; ``ca_passphrase`` opens the CA key.
    ``sans`` are DNS names or IP addresses (``"127.0.0.1"`` becomes an IP
    entry); a TLS server certificate gets ``[name]`` when none are given.
    ``not_before`` (default: now, minus five minutes of skew) and ``days`` may
    describe a window entirely in the past or the future, so that tests can
    make expired and not-yet-valid certificates. An existing ``NAME.pem`` /
    ``NAME.key`` is replaced; the old serial stays in the CA index.
    """
    if kind not in KINDS:
        raise ConfigError(
            f"unknown certificate kind {kind!r} (one of {', '.join(KINDS)})",
            code="CONFIG_CERT_KIND",
        )
    if days < 1:
        raise ConfigError("--days must be at least 1", code="CONFIG_CERT_DAYS")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"not a usable certificate name: {name!r}", code="CONFIG_CERT_NAME")
    ca = load_ca(ca_dir, ca_passphrase)
    out = Path(out)
    key = generate_key(key_type)
    start = not_before if not_before is not None else _now() - _BACKDATE
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(days=days)
    if end > ca.cert.not_valid_after_utc:
        log.warning(
            "cert_validity_clamped", name=name, ca_not_after=str(ca.cert.not_valid_after_utc)
        )
        end = ca.cert.not_valid_after_utc
    serial = x509.random_serial_number()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name, org, OPERATOR_OU if kind == "operator" else None))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(kind, isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if kind in _EKU:
        builder = builder.add_extension(x509.ExtendedKeyUsage(_EKU[kind]), critical=False)
    san_values = list(sans) or ([name] if kind == "tls-server" else [])
    if san_values:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_general_names(san_values)), critical=False
        )
    if crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    cert = builder.sign(ca.key, _hash_for(ca.key))

    written = [
        write_private_key(out / f"{name}.key", key, passphrase),
        write_cert(out / f"{name}.pem", cert),
    ]
    index = read_index(ca.directory)
    index["certs"][serial_hex(serial)] = {
        "subject": subject_text(cert),
        "kind": kind,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "path": str(written[1].resolve()),
        "pin": spki_pin(cert),
        "revoked": None,
    }
    written.append(_write_index(ca.directory, index))
    log.info("cert_issued", kind=kind, subject=subject_text(cert), serial=serial_hex(serial))
    return written


# --------------------------------------------------------------------------- revoke / crl


def revoke(
    ca_dir: Path,
    serial: str | int,
    reason: str = "unspecified",
    *,
    when: dt.datetime | None = None,
) -> list[Path]:
    """Mark ``serial`` revoked in the CA index; the next :func:`make_crl` publishes it.

    ``reason`` is an RFC 5280 CRLReason name (``keyCompromise``, ``superseded``,
    ``cessationOfOperation`` …), case-insensitive. Revoking an already revoked
    certificate changes nothing and returns no paths.
    """
    flag = REASONS.get(reason.strip().lower())
    if flag is None or flag is REMOVE_FROM_CRL:
        usable = ", ".join(f.value for f in x509.ReasonFlags if f is not REMOVE_FROM_CRL)
        raise ConfigError(
            f"unknown revocation reason {reason!r} ({usable})", code="CONFIG_CRL_REASON"
        )
    number = parse_serial(serial)
    index = read_index(ca_dir)
    entry = index["certs"].get(serial_hex(number))
    if entry is None:
        raise ConfigError(
            f"serial {serial_hex(number)} was not issued by the CA in {ca_dir}",
            code="CONFIG_CERT_SERIAL",
        )
    if entry.get("revoked"):
        log.info("cert_already_revoked", serial=serial_hex(number))
        return []
    entry["revoked"] = {"reason": flag.value, "time": (when or _now()).isoformat()}
    path = _write_index(ca_dir, index)
    log.info("cert_revoked", serial=serial_hex(number), reason=flag.value)
    return [path]


def make_crl(
    ca_dir: Path,
    out: Path,
    *,
    next_update_days: float = 7,
    ca_passphrase: bytes | None = None,
    now: dt.datetime | None = None,
) -> list[Path]:
    """Sign a CRL of every revoked serial in the CA index and write it to ``out`` (PEM).

    Each CRL carries the next CRL number and an AuthorityKeyIdentifier.
    """
    ca = load_ca(ca_dir, ca_passphrase)
    index = read_index(ca.directory)
    now = now or _now()
    number = int(index.get("crl_number", 0)) + 1
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for serial, entry in sorted(index["certs"].items()):
        revoked = entry.get("revoked")
        if not revoked:
            continue
        revoked_builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(dt.datetime.fromisoformat(revoked["time"]))
        )
        flag = x509.ReasonFlags(revoked["reason"])
        if flag is not x509.ReasonFlags.unspecified:  # RFC 5280: omit rather than "unspecified"
            revoked_builder = revoked_builder.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked_builder.build())
    crl = builder.sign(ca.key, _hash_for(ca.key))
    out = Path(out)
    _write_atomic(out, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    index["crl_number"] = number
    index_path = _write_index(ca.directory, index)
    log.info("crl_published", path=str(out), crl_number=number, revoked=len(crl))
    return [out, index_path]


# --------------------------------------------------------------------------- inspect / list


def cert_kind(cert: x509.Certificate) -> str:
    """Infer the kind of a certificate: ``ca``, one of :data:`KINDS`, or ``other``."""
    exts = cert.extensions
    with contextlib.suppress(x509.ExtensionNotFound):
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    with contextlib.suppress(x509.ExtensionNotFound):
        eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH in eku:
            return "tls-server"
        if ExtendedKeyUsageOID.CLIENT_AUTH in eku:
            units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
            return "operator" if any(u.value == OPERATOR_OU for u in units) else "tls-client"
    with contextlib.suppress(x509.ExtensionNotFound):
        if exts.get_extension_for_class(x509.KeyUsage).value.content_commitment:
            return "signing"
    return "other"


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


def pem_files(directory: Path) -> list[Path]:
    """Return the files under ``directory`` that hold a PEM certificate, sorted.

    CRLs and keys that happen to end in ``.pem`` are skipped.
    """
    return sorted(
        p
        for p in Path(directory).rglob("*")
        if p.suffix.lower() in _CERT_SUFFIXES and p.is_file() and _holds_cert(p)
    )


def _holds_cert(path: Path) -> bool:
    return _holds(path, b"-----BEGIN CERTIFICATE-----")


def _holds(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:
        return False


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
            code="CONFIG_CERT_MISSING",
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


# --------------------------------------------------------------------------- import-partner


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise ConfigError(f"cannot write {type(value).__name__} to TOML", code="CONFIG_TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Write a flat-or-nested mapping as TOML (tables after plain keys)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, Mapping):
                tables.append((f"{prefix}{key}", value))
            else:
                lines.append(f"{_bare_or_quoted(key)} = {_toml_value(value)}")

    emit("", data)
    while tables:
        name, table = tables.pop(0)
        lines.append("")
        lines.append(f"[{'.'.join(_bare_or_quoted(p) for p in name.split('.'))}]")
        emit(name + ".", table)
    return "\n".join(lines) + "\n"


def _bare_or_quoted(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def import_partner(
    partner_id: str,
    ca_file: Path,
    out: Path,
    *,
    tls_certs: Sequence[Path] = (),
    signing_certs: Sequence[Path] = (),
    url: str | None = None,
    name: str | None = None,
    server_name: str | None = None,
    crl: Path | None = None,
    replace: bool = False,
) -> list[Path]:
    """Write or update ``out/ID.toml`` with a partner's CA, TLS pins and signing certificates.

    The CA and signing certificates are copied to ``out/certs/ID-ca.pem`` and
    ``out/certs/ID-signing-<pin prefix>.pem``; TLS certificates become SPKI pins.
    Every given certificate must be directly issued by the partner's CA. On an
    existing file, pins and signing certificates are added to those already
    there (both accepted during a rotation) unless ``replace``; other keys are
    kept (comments are not).
    """
    if not re.fullmatch(PARTNER_ID_PATTERN, partner_id):
        raise ConfigError(
            f"not a partner id: {partner_id!r} (two capital letters, then up to 14 of A-Z 0-9 -)",
            code="CONFIG_PARTNER_ID",
        )
    out = Path(out)
    toml_path = out / f"{partner_id}.toml"
    existing: dict[str, Any] = {}
    if toml_path.exists():
        try:
            existing = tomllib.loads(toml_path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {toml_path}: {exc}", code="CONFIG_PARTNER") from exc

    ca_certs = load_certs(Path(ca_file))
    if any(cert_kind(ca) != "ca" for ca in ca_certs):
        raise ConfigError(f"{ca_file} is not a CA certificate", code="CONFIG_PARTNER_CA")

    def issued_by_ca(path: Path) -> list[x509.Certificate]:
        certs = load_certs(Path(path))
        for cert in certs:
            if not any(_directly_issued_by(cert, ca) for ca in ca_certs):
                raise ConfigError(
                    f"{path} ({subject_text(cert)}) is not issued by the partner CA {ca_file}",
                    code="CONFIG_PARTNER_CHAIN",
                )
        return certs

    # Validate everything before writing anything.
    cert_dir = out / "certs"
    pins: list[str] = [] if replace else list(existing.get("tls_pins", []))
    guessed_server_name = None
    for path in tls_certs:
        for cert in issued_by_ca(path):
            pin = spki_pin(cert)
            if pin not in pins:
                pins.append(pin)
            if cert_kind(cert) == "tls-server" and guessed_server_name is None:
                guessed_server_name = _first_dns_name(cert)
    signers = [cert for path in signing_certs for cert in issued_by_ca(path)]
    crl_obj = load_crl(Path(crl)) if crl is not None else None
    if crl_obj is not None and not any(_crl_signed_by(crl_obj, ca) for ca in ca_certs):
        raise ConfigError(f"CRL {crl} is not signed by the partner CA {ca_file}", code="CONFIG_CRL")

    ca_dest = write_cert(cert_dir / f"{partner_id}-ca.pem", *ca_certs)
    written: list[Path] = [ca_dest]
    signing: list[str] = [] if replace else list(existing.get("signing_certs", []))
    for cert in signers:
        dest = cert_dir / f"{partner_id}-signing-{spki_pin(cert)[7:19]}.pem"
        written.append(write_cert(dest, cert))
        rel = dest.relative_to(out).as_posix()
        if rel not in signing:
            signing.append(rel)
    crl_value = existing.get("crl", "")
    if crl_obj is not None:
        crl_dest = cert_dir / f"{partner_id}-crl.pem"
        _write_atomic(crl_dest, crl_obj.public_bytes(serialization.Encoding.PEM), 0o644)
        written.append(crl_dest)
        crl_value = crl_dest.relative_to(out).as_posix()

    data: dict[str, Any] = {
        "id": partner_id,
        "name": name or existing.get("name") or partner_id,
        "url": url if url is not None else existing.get("url", ""),
        "server_name": server_name or existing.get("server_name") or guessed_server_name or "",
        "ca": ca_dest.relative_to(out).as_posix(),
        "tls_pins": pins,
        "signing_certs": signing,
        "crl": crl_value,
    }
    for key, value in existing.items():
        data.setdefault(key, value)
    _write_atomic(toml_path, dump_toml(data).encode("utf-8"), 0o644)
    written.append(toml_path)
    log.info("partner_imported", partner=partner_id, pins=len(pins), signing_certs=len(signing))
    return written


def issued_directly_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` signed ``cert`` (one level, names and signature)."""
    return cert.issuer == issuer.subject and _directly_issued_by(cert, issuer)


def _directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False
    return crl.issuer == issuer.subject and crl.is_signature_valid(key)


def _first_dns_name(cert: x509.Certificate) -> str | None:
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return names[0]
    return None
