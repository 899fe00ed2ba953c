"""Reload without restart: re-read configuration and trust material, decide what changes.

``load_material`` reads everything a reload swaps in — settings, partners,
agreements, every partner's CA, pins, signing certificates and CRL, this
gateway's own certificates and keys, the admin token — and raises
``ConfigError`` when anything is broken, so that the old material stays in
force. ``closures`` decides which established partner connections must close
under the new trust (a removed partner, a revoked certificate); every other
connection is kept, and its identity is carried into the new trust store.

The swap itself (``Reloader.reload``) is a handful of assignments on the event
loop, so a request sees either the old material or the new, never a mix. The
``Reloader`` also puts in force a trust store with a newer CRL (``put_in_force``,
for the CRL keeper) under the same lock, and closes the outbound clients it
replaced once their requests had time to end.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from cryptography import x509

from gateway import pem, tasks
from gateway.api.admin import AdminAuth
from gateway.api.gate import peer_address
from gateway.api.guard import Guard
from gateway.audit.certs import record_event
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.errors import AuthError, ConfigError, ErrorCode, GatewayError, RelayError
from gateway.partner_client.client import PartnerClient, PartnerLink
from gateway.pem import load_cert
from gateway.pipeline.outbound import OutboundPipeline
from gateway.pipeline.runtime import Runtime
from gateway.trust.identity import TrustStore, peer_der
from gateway.xml.signature import Signer

log = structlog.get_logger(__name__)


#: settings a running gateway cannot change without a restart (listeners, broker, stores)
RESTART_ONLY = (
    "gateway_id",
    "state_dir",
    "partner_api",
    "admin",
    "broker",
    "audit_url",
    "state_url",
)


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


def closed_events(closing: Sequence[Closure], actor: str) -> list[AuditEvent]:
    """One ``connection_closed`` entry per connection a new trust store closed."""
    return [
        AuditEvent(
            event="connection_closed",
            direction="inbound",
            partner=c.partner,
            outcome="closed",
            code=c.error.code,
            reason=c.error.reason,
            actor=actor,
            details={"peer": peer_address(c.transport.get_extra_info("peername"))},
        )
        for c in closing
    ]


def new_client(settings: Settings, trust: TrustStore) -> PartnerClient:
    """The outbound client for ``settings`` and ``trust`` (a swap replaces it)."""
    return PartnerClient(
        settings.partners,
        trust,
        settings.tls,
        timeout=settings.delivery.timeout,
        connections_per_partner=settings.delivery.concurrency,
    )


async def record_signing_cert(audit: AuditLog, cert: x509.Certificate, actor: str) -> None:
    """Record the signing certificate in the audit log, before it signs a checkpoint.

    Only when the log does not hold it yet: ``audit verify`` then trusts it after a
    rotation. Every worker of ``serve --workers`` checks, since any of them may sign the
    next checkpoint; two starting at once may both record it, which does no harm.
    """
    sha = pem.cert_sha256(cert)
    if any(r.sha256 == sha for r in await audit.cert_records()):
        return
    seq = await audit.append(record_event(cert, actor=actor, source="gateway"))
    log.info(
        "signing_cert_recorded",
        seq=seq,
        cert_sha256=sha,
        serial=pem.serial_hex(cert.serial_number),
    )


class ReloadHost(Protocol):
    """What the reload needs from the running gateway; it swaps the four attributes."""

    settings: Settings
    server_context: ssl.SSLContext
    admin_auth: AdminAuth
    own_certs: tuple[tuple[Path, x509.Certificate], ...]

    @property
    def worker(self) -> int | None:
        """Index under ``serve --workers`` (None: the only process)."""
        ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def guard(self) -> Guard: ...

    @property
    def connections(self) -> dict[str, set[asyncio.Transport]]:
        """Partner -> its open, authenticated connections."""
        ...

    @property
    def outbound(self) -> OutboundPipeline | None:
        """The pipeline consuming the outbound queues (None before the start)."""
        ...


class Reloader:
    """Swaps new material into the running gateway, one swap at a time."""

    def __init__(self, host: ReloadHost) -> None:
        self._host = host
        #: held during a swap: a reload and a CRL install never interleave
        self.lock = asyncio.Lock()
        self._retired_clients: set[PartnerLink] = set()

    async def reload(self, actor: str) -> ReloadResult:
        """Re-read configuration and trust material; keep the old on any problem.

        Audited as ``operator_action`` with the actor, whether it worked or not.
        Under ``serve --workers``, worker 0 (the admin listener's) also has the
        supervisor reload the other workers.
        """
        host = self._host
        if host.worker == 0 and not actor.startswith("signal:"):
            from gateway.service.workers import ask_supervisor_to_reload_others

            ask_supervisor_to_reload_others()
        async with self.lock:
            try:
                material = await asyncio.to_thread(load_material, host.settings.path, host.settings)
            except GatewayError as exc:
                log.error("reload_failed", actor=actor, code=exc.code, reason=exc.reason)
                await host.runtime.audit.append(
                    AuditEvent(
                        event="operator_action",
                        actor=actor,
                        outcome="failed",
                        code=exc.code,
                        reason=exc.reason,
                        details={"action": "reload"},
                    )
                )
                return ReloadResult(False, actor, code=exc.code, reason=exc.reason)
            return await self._install(material, actor)

    def put_in_force(
        self, trust: TrustStore, settings: Settings
    ) -> tuple[list[Closure], dict[bytes, str]]:
        """Swap in ``trust`` and a new outbound client; close the connections it refuses.

        Synchronous, so nothing runs in between. Returns the connections closed and the
        identities carried over (of those kept).
        """
        host = self._host
        rt = host.runtime
        closing, kept = closures(trust, host.connections)
        trust.carry(kept)
        old_client = rt.client
        rt.trust = trust
        rt.client = new_client(settings, trust)
        self._retire(old_client, settings.delivery.timeout)
        for c in closing:
            c.transport.abort()
            host.connections.get(c.partner, set()).discard(c.transport)
        return closing, kept

    async def close_retired(self) -> None:
        """Close the replaced outbound clients now (at shutdown)."""
        for client in list(self._retired_clients):
            self._retired_clients.discard(client)
            await client.close()

    async def _install(self, m: Material, actor: str) -> ReloadResult:
        host = self._host
        old = host.settings
        rt = host.runtime
        if m.signer.cert != rt.signer.cert:
            await record_signing_cert(rt.audit, m.signer.cert, actor)
        # the swap: nothing awaits in between, so a request sees all old or all new
        host.settings = m.settings
        host.server_context = m.server_context
        host.guard.limits = m.settings.partner_api
        host.admin_auth = m.admin_auth
        host.own_certs = m.own_certs
        rt.settings = m.settings
        rt.signer = m.signer
        rt.audit.set_signer(m.signer)
        closing, kept = self.put_in_force(m.trust, m.settings)
        for partner in [p for p in host.connections if p not in m.settings.partners]:
            host.connections.pop(partner, None)
        added = tuple(sorted(set(m.settings.partners) - set(old.partners)))
        removed = tuple(sorted(set(old.partners) - set(m.settings.partners)))
        warnings = await self._follow_partners(sorted(m.settings.partners))
        result = ReloadResult(
            True,
            actor,
            reason="configuration and trust material reloaded",
            added=added,
            removed=removed,
            partners=tuple(sorted(m.settings.partners)),
            closed=len(closing),
            kept=len(kept),
            warnings=tuple(warnings),
        )
        events = closed_events(closing, actor)
        events += _agreement_changes(old, m.settings, actor)
        events.append(
            AuditEvent(
                event="operator_action",
                actor=actor,
                outcome="ok",
                code=ErrorCode.RELOAD_OK,
                reason=result.reason,
                details={
                    "action": "reload",
                    "partners": ",".join(result.partners),
                    "added": ",".join(added),
                    "removed": ",".join(removed),
                    "connections_closed": len(closing),
                    "connections_kept": len(kept),
                },
            )
        )
        await rt.audit.append_many(events)
        log.info(
            "config_reloaded",
            actor=actor,
            partners=list(result.partners),
            added=added,
            removed=removed,
            connections_closed=len(closing),
            connections_kept=len(kept),
        )
        return result

    async def _follow_partners(self, partners: Sequence[str]) -> list[str]:
        """Declare and consume the outbound queue of every partner not consumed yet.

        Partners a reload added, and any whose consumer an earlier reload could not start
        (broker unreachable then). A removed partner's consumer stays: what is still
        queued for it is dead-lettered with ``PARTNER_UNKNOWN`` (the back office hears of
        it), not left unseen; added back, it keeps that one consumer.
        """
        relay = self._host.runtime.relay
        missing = [p for p in partners if not relay.consumes(relay.names.outbound_queue(p))]
        outbound = self._host.outbound
        if not missing or outbound is None:
            return []

        async def follow() -> None:
            await relay.add_partners(missing)
            for partner in missing:
                await relay.consume(relay.names.outbound_queue(partner), outbound.handler(partner))

        try:
            # bounded: a broker that stops answering must not hold the reload lock
            async with asyncio.timeout(relay.confirm_timeout):
                await follow()
        except (RelayError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, RelayError) else "the broker did not answer"
            log.warning("reload_consumers_failed", partners=",".join(missing), reason=reason)
            return [
                f"outbound queues of {', '.join(missing)} not consumed yet ({reason}); "
                "the next reload tries again"
            ]
        return []

    def _retire(self, client: PartnerLink, grace: float) -> None:
        """Close a replaced outbound client once its in-flight requests had time to end."""
        self._retired_clients.add(client)

        async def later() -> None:
            await asyncio.sleep(grace + 1.0)
            if client in self._retired_clients:
                self._retired_clients.discard(client)
                await client.close()

        tasks.spawn(later(), name="retire-partner-client")
