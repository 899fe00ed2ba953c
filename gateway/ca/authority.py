"""The operator's certificate authority: create a CA, issue, revoke, publish a CRL.

Plain functions over the ``cryptography`` library; ``gateway.cli.certs`` puts the
``maagw certs`` commands on top of them (with ``ca.inspect``, ``ca.rotation`` and
``ca.partner_import`` for checks, rotation and partner import). The loading helpers the
TLS and signing code use (``load_cert``, ``load_private_key``, ``spki_pin``) are in
``gateway.pem``.

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

import datetime as dt
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError, ErrorCode
from gateway.pem import (
    KINDS,
    OPERATOR_OU,
    _now,
    _write_atomic,
    load_cert,
    load_private_key,
    parse_serial,
    public_key_pin,
    serial_hex,
    spki_pin,
    subject_text,
    write_cert,
    write_private_key,
)

log = structlog.get_logger(__name__)


KeyType = Literal["ec", "rsa"]


#: Curves :func:`check` accepts; anything else is refused.
ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


#: Smallest RSA modulus :func:`check` accepts.
MIN_RSA_BITS = 2048


#: RSA modulus of keys this module generates.
RSA_BITS = 3072


CA_CERT = "ca.pem"


CA_KEY = "ca.key"


INDEX = "index.json"


#: RFC 5280 CRLReason names (case-insensitive on input) -> reason flag.
REASONS: dict[str, x509.ReasonFlags] = {flag.value.lower(): flag for flag in x509.ReasonFlags}


# removeFromCRL only makes sense in delta CRLs, which this toolkit does not publish.
REMOVE_FROM_CRL = x509.ReasonFlags.remove_from_crl


# Backdating absorbs clock skew between the issuer and the verifier.
_BACKDATE = dt.timedelta(minutes=5)


def generate_key(key_type: KeyType = "ec") -> CertificateIssuerPrivateKeyTypes:
    """Generate an ECDSA P-256 key (``"ec"``) or an RSA-3072 key (``"rsa"``)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ConfigError(f"unknown key type {key_type!r} (ec or rsa)", code=ErrorCode.CONFIG_KEY_TYPE)


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
                    "empty subject alternative name", code=ErrorCode.CONFIG_CERT_SAN
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
        raise ConfigError(f"cannot read CA index {path}", code=ErrorCode.CONFIG_CA_INDEX) from exc
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
            code=ErrorCode.CONFIG_CA,
            path=str(ca_dir),
        )
    cert = load_cert(ca_dir / CA_CERT)
    key = load_private_key(ca_dir / CA_KEY, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"unsupported CA key type in {ca_dir / CA_KEY}", code=ErrorCode.CONFIG_CA)
    if public_key_pin(key.public_key()) != spki_pin(cert):
        raise ConfigError(
            f"{CA_KEY} does not match {CA_CERT} in {ca_dir}", code=ErrorCode.CONFIG_CA
        )
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
            code=ErrorCode.CONFIG_CA_EXISTS,
            path=str(out),
        )
    if days < 1:
        raise ConfigError("a CA needs --days of at least 1", code=ErrorCode.CONFIG_CERT_DAYS)
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
            code=ErrorCode.CONFIG_CERT_KIND,
        )
    if days < 1:
        raise ConfigError("--days must be at least 1", code=ErrorCode.CONFIG_CERT_DAYS)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(
            f"not a usable certificate name: {name!r}", code=ErrorCode.CONFIG_CERT_NAME
        )
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
            f"unknown revocation reason {reason!r} ({usable})", code=ErrorCode.CONFIG_CRL_REASON
        )
    number = parse_serial(serial)
    index = read_index(ca_dir)
    entry = index["certs"].get(serial_hex(number))
    if entry is None:
        raise ConfigError(
            f"serial {serial_hex(number)} was not issued by the CA in {ca_dir}",
            code=ErrorCode.CONFIG_CERT_SERIAL,
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
