"""Certificates, keys and CRLs on disk, and how they are named: PEM/DER files, pins, serials."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError, ErrorCode

#: Files that may hold certificates.
_CERT_SUFFIXES = (".pem", ".crt", ".cer")


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
        raise ConfigError(f"not a hex serial number: {text!r}", code=ErrorCode.CONFIG_CERT_SERIAL)
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
            f"cannot read {what} {path}: {exc.strerror}", code=ErrorCode.CONFIG_FILE, path=str(path)
        ) from exc


def load_certs(path: Path) -> list[x509.Certificate]:
    """Load every certificate from a PEM file (a bundle or a single one)."""
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(
            f"not a PEM certificate file: {path}", code=ErrorCode.CONFIG_CERT, path=str(path)
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
            f"private key {path}: {exc}", code=ErrorCode.CONFIG_KEY_PASSPHRASE, path=str(path)
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            f"cannot load private key {path} (not a PEM key, or wrong passphrase)",
            code=ErrorCode.CONFIG_KEY,
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
        raise ConfigError(f"not a CRL: {path}", code=ErrorCode.CONFIG_CRL, path=str(path)) from exc


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> Path:
    """Write a CRL as PEM (mode 0644), atomically: a reader sees the old or the new one."""
    _write_atomic(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return Path(path)


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


#: The kinds of leaf certificate :func:`issue` makes.
KINDS = ("tls-server", "tls-client", "signing", "operator")
#: Organizational unit that marks an operator certificate (the admin listener
#: tells an operator from the gateway's own TLS client certificate by it).
OPERATOR_OU = "operator"


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
