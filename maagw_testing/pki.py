"""Helpers for certificate tests: issue one leaf from a test CA, forge one, read a file's mode."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from gateway import pem
from gateway.ca import authority

#: the tests' "now", in whole seconds as certificates keep it
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def mode_of(path: Path) -> int:
    """The permission bits of a file (0o600 …)."""
    return stat.S_IMODE(path.stat().st_mode)


def issue_one(
    ca_dir: Path, out: Path, kind: str = "tls-client", name: str = "leaf", **kw: Any
) -> tuple[x509.Certificate, Path, Path]:
    """Issue one certificate and return (cert, cert path, key path)."""
    authority.issue(ca_dir, kind, name, out, **kw)
    return pem.load_cert(out / f"{name}.pem"), out / f"{name}.pem", out / f"{name}.key"


def forge_leaf(ca_dir: Path, key: CertificateIssuerPrivateKeyTypes, path: Path) -> Path:
    """Write a leaf certificate for an arbitrary key pair, signed by the test CA."""
    ca = authority.load_ca(ca_dir)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=100))
        .sign(ca.key, hashes.SHA256())
    )
    pem.write_cert(path, cert)
    pem.write_private_key(path.with_suffix(".key"), key)
    return path
