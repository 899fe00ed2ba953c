"""``maagw certs import-partner``: write or update a partner's file from its CA and certificates."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError, ErrorCode
from gateway.pem import (
    _crl_signed_by,
    _directly_issued_by,
    _write_atomic,
    cert_kind,
    load_certs,
    load_crl,
    spki_pin,
    subject_text,
    write_cert,
)

#: Partner ids as gateway.config accepts them (``XB``, ``XB-CUSTOMS``).
PARTNER_ID_PATTERN = r"[A-Z]{2}[A-Z0-9-]{0,14}"

log = structlog.get_logger(__name__)


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
    raise ConfigError(f"cannot write {type(value).__name__} to TOML", code=ErrorCode.CONFIG_TOML)


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
            code=ErrorCode.CONFIG_PARTNER_ID,
        )
    out = Path(out)
    toml_path = out / f"{partner_id}.toml"
    existing: dict[str, Any] = {}
    if toml_path.exists():
        try:
            existing = tomllib.loads(toml_path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"cannot read {toml_path}: {exc}", code=ErrorCode.CONFIG_PARTNER
            ) from exc

    ca_certs = load_certs(Path(ca_file))
    if any(cert_kind(ca) != "ca" for ca in ca_certs):
        raise ConfigError(f"{ca_file} is not a CA certificate", code=ErrorCode.CONFIG_PARTNER_CA)

    def issued_by_ca(path: Path) -> list[x509.Certificate]:
        certs = load_certs(Path(path))
        for cert in certs:
            if not any(_directly_issued_by(cert, ca) for ca in ca_certs):
                raise ConfigError(
                    f"{path} ({subject_text(cert)}) is not issued by the partner CA {ca_file}",
                    code=ErrorCode.CONFIG_PARTNER_CHAIN,
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
        raise ConfigError(
            f"CRL {crl} is not signed by the partner CA {ca_file}", code=ErrorCode.CONFIG_CRL
        )

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


def _first_dns_name(cert: x509.Certificate) -> str | None:
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return names[0]
    return None
