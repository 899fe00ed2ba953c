"""Reload without restart: re-read configuration and trust material, decide what changes.

``load_material`` reads everything a reload swaps in — settings, partners,
agreements, every partner's CA, pins, signing certificates and CRL, this
gateway's own certificates and keys, the admin token — and raises
``ConfigError`` when anything is broken, so that the old material stays in
force. ``closures`` decides which established partner connections must close
under the new trust (a removed partner, a revoked certificate); every other
connection is kept, and its identity is carried into the new trust store.

The swap itself (``Gateway.reload``) is a handful of assignments on the event
loop, so a request sees either the old material or the new, never a mix.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from gateway.api.admin import AdminAuth
from gateway.audit.chain import AuditEvent
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.errors import AuthError, ConfigError, ErrorCode, GatewayError
from gateway.pem import load_cert
from gateway.trust.identity import TrustStore, peer_der
from gateway.xml.signature import Signer

log = structlog.get_logger(__name__)


#: settings a running gateway cannot change without a restart (listeners, broker, stores)
RESTART_ONLY = ("gateway_id", "state_dir", "partner_api", "admin", "broker", "audit_url")


#: the ``[admin]`` settings a reload does apply (the rest is the listener: restart)
ADMIN_RELOADABLE = frozenset({"token_file", "readyz_public"})


@dataclass(frozen=True, slots=True)
class Material:
    """Everything a reload swaps in, loaded and checked before anything is swapped."""

    settings: Settings
    trust: TrustStore
    server_context: ssl.SSLContext
    signer: Signer
    admin_auth: AdminAuth
    own_certs: tuple[tuple[Path, x509.Certificate], ...]


@dataclass(frozen=True, slots=True)
class Closure:
    """An established connection that must close after a reload, and why."""

    transport: asyncio.Transport
    partner: str
    error: AuthError


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: partners added, removed and kept, connections closed."""

    ok: bool
    actor: str
    code: str = ErrorCode.RELOAD_OK
    reason: str = ""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()
    closed: int = 0
    kept: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "actor": self.actor,
            "code": self.code,
            "reason": self.reason,
            "partners": list(self.partners),
            "added": list(self.added),
            "removed": list(self.removed),
            "connections_closed": self.closed,
            "connections_kept": self.kept,
            "warnings": list(self.warnings),
        }


def load_material(path: Path, current: Settings) -> Material:
    """Read and check the whole configuration at ``path``; ``ConfigError`` if anything is off.

    Blocking (files, key parsing): run it in a thread.
    """
    settings = load_settings(path)
    changed = restart_only_changes(current, settings)
    if changed:
        raise ConfigError(
            f"{path}: {', '.join(changed)} changed; these take effect only after a restart",
            code=ErrorCode.CONFIG_RESTART_REQUIRED,
        )
    trust = TrustStore(settings.partners)
    server_context = trust.server_context(settings.tls)
    # the outbound client loads these per partner later; a broken pair must fail now
    for partner in settings.partners:
        trust.client_context(partner, settings.tls)
    try:
        signer = Signer.from_files(settings.signing.key, settings.signing.cert)
    except GatewayError as exc:
        raise ConfigError(f"signing key or certificate: {exc.reason}", code=exc.code) from None
    own = own_certificates(settings)
    return Material(settings, trust, server_context, signer, AdminAuth.load(settings), own)


def own_certificates(settings: Settings) -> tuple[tuple[Path, x509.Certificate], ...]:
    """This gateway's own TLS and signing certificates (readiness checks their validity)."""
    paths = (settings.tls.server_cert, settings.tls.client_cert, settings.signing.cert)
    try:
        return tuple((p, load_cert(p)) for p in paths)
    except GatewayError as exc:
        raise ConfigError(exc.reason, code=exc.code) from None


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The names of ``RESTART_ONLY`` settings that differ between ``old`` and ``new``."""
    changed = []
    for name in RESTART_ONLY:
        before, after = getattr(old, name), getattr(new, name)
        if name == "admin":
            before = before.model_dump(exclude=ADMIN_RELOADABLE)
            after = after.model_dump(exclude=ADMIN_RELOADABLE)
        if before != after:
            changed.append(name)
    return changed


def closures(
    trust: TrustStore, connections: Mapping[str, Iterable[asyncio.Transport]]
) -> tuple[list[Closure], dict[bytes, str]]:
    """Connections to close under ``trust``, and the identities of those kept (to carry)."""
    closing: list[Closure] = []
    kept: dict[bytes, str] = {}
    for partner, transports in connections.items():
        for transport in list(transports):
            if transport.is_closing():
                continue
            der = peer_der(transport.get_extra_info("ssl_object"))
            error = trust.closing_reason(der, partner)
            if error is not None:
                closing.append(Closure(transport, partner, error))
            elif der is not None:
                kept[der] = partner
    return closing, kept


def _agreement_changes(old: Settings, new: Settings, actor: str) -> list[AuditEvent]:
    """One operator-action entry per agreement added, removed or changed by a reload."""
    changes: list[AuditEvent] = []
    for agreement_id in sorted(set(old.agreements) | set(new.agreements)):
        before, after = old.agreements.get(agreement_id), new.agreements.get(agreement_id)
        # compare the agreements' terms: model equality would also compare the private
        # precomputed look-up tables, which are new objects after every load
        if (before and before.model_dump()) == (after and after.model_dump()):
            continue
        what = "added" if before is None else "removed" if after is None else "changed"
        current = after or before
        assert current is not None
        changes.append(
            AuditEvent(
                event="operator_action",
                agreement=agreement_id,
                actor=actor,
                outcome="ok",
                code=ErrorCode(f"AGREEMENT_{what.upper()}"),
                reason=f"agreement {agreement_id} {what} by reload",
                details={
                    "action": "agreement_change",
                    "status": str(current.status),
                    "status_before": str(before.status) if before else "",
                    "valid_until": str(current.valid_until),
                },
            )
        )
    return changes
