"""Build and run one gateway: partner listener, admin listener, relay, consumers.

The partner listener accepts plain TCP and runs the TLS handshake itself
(``tls_transport.start_tls``: asyncio's, with a smaller receive buffer) through a
connection gate, so that:

- a handshake the TLS library refuses (no certificate, unknown issuer, an old
  protocol, a timeout) is counted and logged with the peer's address — asyncio
  would otherwise drop it silently;
- each new connection uses the *current* server context, which a reload swaps;
- once the handshake completes, the gate identifies the partner from the
  verified client certificate and aborts the connection — before any HTTP
  byte is read or written — when it does not belong to a partner (wrong CA,
  pins, revoked, expired). Such refusals are logged and audited with the peer;
- an admitted connection is bounded by the guard (``gateway.guard``): the partner's
  connection and request caps, and a deadline for every state of the connection
  (waiting, receiving a head, receiving a body), fed by the bytes the gate passes on.

Reload (SIGHUP, or ``POST /v1/reload`` on the admin listener) re-reads the
configuration and trust material, swaps it in, and closes only the connections
of removed partners and revoked certificates; see ``gateway.reload``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from cryptography import x509

from gateway import pem, tasks
from gateway.api import admin
from gateway.api.gate import ConnectionGate, handshake_reason, peer_address
from gateway.api.guard import GUARD, LINGER_SECONDS, Guard, track_requests
from gateway.api.partner import PIPELINE, RUNTIME, _ping, handle_messages
from gateway.api.strict_http import handler_factory, hide_server
from gateway.audit.certs import record_event
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.ca import inspect
from gateway.config.models import Settings
from gateway.errors import AuditError, AuthError, ConfigError, ErrorCode, GatewayError, RelayError
from gateway.partner_client.client import PartnerClient, PartnerLink
from gateway.pipeline.inbound import InboundPipeline
from gateway.pipeline.outbound import OutboundPipeline
from gateway.pipeline.runtime import Runtime
from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from gateway.service.memory import MemoryTrimmer
from gateway.service.reload import (
    Material,
    ReloadResult,
    _agreement_changes,
    closures,
    load_material,
    own_certificates,
)
from gateway.state.sqlite import Store
from gateway.trust import crl
from gateway.trust.identity import TrustStore
from gateway.xml.envelope import DUPLICATE_RETENTION_SECONDS, FUTURE_SKEW_SECONDS
from gateway.xml.signature import Signer

log = structlog.get_logger(__name__)


#: how long SIGTERM waits for in-flight deliveries before returning the rest to their queues
SHUTDOWN_GRACE_SECONDS = 10.0


#: how often the expiry watch looks at the configured certificates
EXPIRY_CHECK_SECONDS = 24 * 3600.0


#: how often the state store forgets claims and outbox entries past the replay window
HOUSEKEEPING_SECONDS = 3600.0


class Gateway:
    """One administration's gateway process."""

    def __init__(
        self, settings: Settings, *, admin_tls: bool | None = None, worker: int | None = None
    ) -> None:
        self.settings = settings
        #: index of this process under ``serve --workers N`` (None: the only process)
        self.worker = worker
        #: this run of the process (claims made now carry it; see Store.take_over_claims)
        self.boot = uuid.uuid4().hex[:12]
        self.runtime: Runtime
        #: partner -> its open, authenticated connections
        self.connections: dict[str, set[asyncio.Transport]] = {}
        #: TLS handshakes refused inside the TLS library, by code (``TLS_NO_CERTIFICATE`` …)
        self.handshake_failures: Counter[str] = Counter()
        #: connections refused by the gate after the handshake, by code (``AUTH_PIN_MISMATCH`` …)
        self.auth_refusals: Counter[str] = Counter()
        #: deadlines and caps of partner connections (its counters: refusals, closures …)
        self.guard = Guard(settings.partner_api, self._audit_soon)
        #: returns the memory of closed connections to the system
        self.trimmer = MemoryTrimmer()
        self.partner_port: int | None = None
        self.admin_port: int | None = None
        self.admin_tls = settings.admin.tls if admin_tls is None else admin_tls
        self.server_context: ssl.SSLContext
        self.admin_auth: admin.AdminAuth
        self._own_certs: tuple[tuple[Path, Any], ...] = ()
        self._http_factory: Any = None
        self.handshaking: set[asyncio.Transport] = set()
        self._servers: list[asyncio.Server] = []
        self._partner_server: asyncio.Server | None = None
        self._admin_server: asyncio.Server | None = None
        self._admin_factory: Any = None
        self._runners: list[web.BaseRunner] = []
        self._outbound: OutboundPipeline | None = None
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._retired_clients: set[PartnerLink] = set()
        self._watch: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._crls = crl.WatchState()

    @property
    def gateway_id(self) -> str:
        return self.settings.gateway_id

    @property
    def instance(self) -> str:
        """This process's name among the administration's gateways (claims carry it)."""
        base = self.settings.instance_id
        return base if self.worker is None else f"{base}/w{self.worker}"

    async def start(self) -> None:
        """Listen, load material, connect the broker, open the stores, then serve and consume.

        Both listening sockets are bound first, before anything slow (the schema
        preload, the broker), so that a port in use fails at once. Connections wait in
        the backlog until the runtime exists; only then do the listeners serve.
        """
        s = self.settings
        self.admin_auth = admin.AdminAuth.load(s)
        try:
            await self._bind_listeners()
            await self._start_bound()
        except BaseException:
            self._close_listeners()
            raise

    async def _start_bound(self) -> None:
        s = self.settings
        if s.preload_schemas:
            await asyncio.to_thread(_preload_adapters)
        trust = TrustStore(s.partners)
        self.server_context = trust.server_context(s.tls)
        self._own_certs = own_certificates(s)
        signer = Signer.from_files(s.signing.key, s.signing.cert)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(s.state_dir / "state.db", owner=self.instance, boot=self.boot)
        taken = await store.take_over_claims()
        if taken:
            # this instance's previous process died while publishing these: the senders'
            # next attempts are published at once, marked as possible duplicates
            log.warning("claims_taken_over", count=taken, instance=self.instance)
        audit = await AuditLog.open(s.audit_url, gateway_id=s.gateway_id, checkpoint_signer=signer)
        await self._record_signing_cert(audit, signer.cert, "system")
        relay = Relay(
            s.broker.url,
            Names(s.broker.prefix),
            confirm_timeout=s.broker.confirm_timeout,
            prefetch=s.broker.prefetch,
            connection_name=f"maagw-{s.broker.prefix}{s.gateway_id}",
        )
        try:
            await relay.connect(s.partners)
        except GatewayError:
            await store.close()
            await audit.close()
            raise
        self.runtime = Runtime(s, trust, signer, relay, store, audit, self._new_client(s, trust))
        await self._serve_partners()
        if self.worker in (None, 0):
            await self._serve_admin()
        self._outbound = OutboundPipeline(self.runtime)
        for partner in s.partners:
            await relay.consume(
                relay.names.outbound_queue(partner), self._outbound.handler(partner)
            )
        await audit.append(
            AuditEvent(
                event="started",
                outcome="ok",
                actor="system",
                details={"partner_port": str(self.partner_port)},
            )
        )
        self._watch = tasks.spawn(self._watch_trust(), name="cert-and-crl-watch")
        if self.worker in (None, 0):  # one process per state store is enough
            self._housekeeping = tasks.spawn(self._housekeep(), name="state-housekeeping")
        log.info(
            "gateway_started",
            gateway=s.gateway_id,
            partner_port=self.partner_port,
            admin_port=self.admin_port,
            admin_tls=self.admin_tls,
            partners=sorted(s.partners),
        )

    @staticmethod
    def _new_client(s: Settings, trust: TrustStore) -> PartnerClient:
        return PartnerClient(
            s.partners,
            trust,
            s.tls,
            timeout=s.delivery.timeout,
            connections_per_partner=s.delivery.concurrency,
        )

    def http_handler(self, **kwargs: Any) -> RequestHandler:
        """A fresh aiohttp protocol for an authenticated partner connection."""
        handler: RequestHandler = self._http_factory(
            keepalive_timeout=self.guard.backstop_keepalive(), **kwargs
        )
        return handler

    async def _serve_partners(self) -> None:
        s = self.settings
        app = web.Application(
            client_max_size=s.partner_api.max_body_bytes + 1, middlewares=[track_requests]
        )
        app[RUNTIME] = self.runtime
        app[PIPELINE] = InboundPipeline(self.runtime)
        app[GUARD] = self.guard
        app.on_response_prepare.append(hide_server)
        app.router.add_post("/v1/messages", handle_messages)
        app.router.add_get("/v1/ping", _ping)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        # bodies are never inflated (strict_http); an unread body is dropped for
        # LINGER_SECONDS, not aiohttp's ten
        assert runner.server is not None  # set up above
        self._http_factory = handler_factory(
            runner.server, access_log=None, lingering_time=LINGER_SECONDS, auto_decompress=False
        )
        assert self._partner_server is not None, "listeners are bound first"
        await self._partner_server.start_serving()

    async def _bind_listeners(self) -> None:
        """Bind and listen on the partner port and (worker 0) the admin port; serve later."""
        s = self.settings
        self._partner_server = await _listen(
            lambda: ConnectionGate(self),
            s.partner_api.host,
            s.partner_api.port,
            setting="partner_api",
            backlog=1024,
            # several worker processes share the partner port
            reuse_port=self.worker is not None,
        )
        self._servers.append(self._partner_server)
        self.partner_port = self._partner_server.sockets[0].getsockname()[1]
        if self.worker in (None, 0):
            self._admin_server = await _listen(
                lambda: self._admin_factory(),
                s.admin.host,
                s.admin.port,
                setting="admin",
                ssl_context=admin.server_context(s) if self.admin_tls else None,
            )
            self._servers.append(self._admin_server)
            self.admin_port = self._admin_server.sockets[0].getsockname()[1]
        log.info(
            "listeners_bound",
            partner_port=self.partner_port,
            admin_port=self.admin_port,
            serving="once the broker is connected and the stores are open",
        )

    def _close_listeners(self) -> None:
        """Close the bound sockets after a failed start."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def _serve_admin(self) -> None:
        s = self.settings
        app = admin.build_app(self)
        app.on_response_prepare.append(hide_server)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        clear = not self.admin_tls
        if clear and self.admin_auth.token is not None and not _is_loopback(s.admin.host):
            log.warning(
                "admin_token_in_clear",
                host=s.admin.host,
                hint="serve the admin listener with TLS or bind it to loopback",
            )
        if clear and self.admin_auth.token is None:
            log.warning(
                "admin_unauthenticated",
                hint="no admin.token_file and no TLS: only /healthz is usable",
            )
        # not a TCPSite: its handlers would name aiohttp's version on a malformed request
        assert runner.server is not None  # set up above
        self._admin_factory = handler_factory(runner.server, access_log=None)
        assert self._admin_server is not None, "listeners are bound first"
        await self._admin_server.start_serving()

    # ------------------------------------------------------------------ admin target

    async def readiness(self) -> dict[str, bool]:
        """Broker connected, stores writable, own certificates within validity.

        A store is not ready while its writes fail (its health probes it meanwhile).
        """
        now = datetime.now(UTC)
        rt = self.runtime
        return {
            "broker": rt.relay.ready,
            "state": rt.store.health.healthy,
            "audit": rt.audit.health.healthy
            and await _audit_writable(rt.audit, self.settings.audit_url),
            "certificates": all(
                c.not_valid_before_utc <= now <= c.not_valid_after_utc for _, c in self._own_certs
            ),
        }

    def admin_refused(self, reason: str, peer: str) -> None:
        """Log and audit a request the admin listener refused for lack of authentication."""
        log.warning("admin_refused", reason=reason, peer=peer)
        self._audit_soon(
            AuditEvent(
                event="auth_failure",
                outcome="refused",
                code=ErrorCode.AUTH_OPERATOR_REQUIRED,
                reason=reason,
                details={"peer": peer, "listener": "admin"},
            )
        )

    def cert_expiry(self) -> dict[str, int]:
        """Days to expiry of every configured certificate file (the fewest, for a bundle)."""
        days: dict[str, int] = {}
        for path, _subject, left in inspect.expiry_report(
            inspect.configured_cert_paths(self.settings)
        ):
            key = str(path)
            days[key] = min(left, days.get(key, left))
        return days

    async def _expiry_watch(self) -> None:
        while True:
            try:
                report = await asyncio.to_thread(self.cert_expiry)
            except GatewayError as exc:
                log.warning("cert_expiry_unreadable", code=exc.code, reason=exc.reason)
                report = {}
            for path, left in sorted(report.items()):
                if left < inspect.EXPIRY_WARNING_DAYS:
                    log.warning("cert_expiring", path=path, days_left=left)
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)

    async def _watch_trust(self) -> None:
        """The certificate expiry watch and the CRL watch, in one task (cancelled together)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._expiry_watch(), name="cert-expiry-watch")
            group.create_task(self._crl_watch(), name="crl-watch")

    # ------------------------------------------------------------------ CRLs

    def crl_statuses(self, now: datetime | None = None) -> list[crl.CrlStatus]:
        """How fresh every partner's CRL in force is (partners without a CRL are left out)."""
        horizon = timedelta(days=self.settings.crl.warning_days)
        found = (
            crl.status(t, horizon, now) for _, t in sorted(self.runtime.trust.partners.items())
        )
        return [st for st in found if st is not None]

    async def readiness_details(self) -> dict[str, Any]:
        """What ``/readyz`` shows beside the checks: each partner's CRL and its nextUpdate.

        A CRL near or past its nextUpdate does not make the gateway unready: it concerns
        one partner, and an unready instance is taken out of service for every partner.
        """
        return {"crls": {st.partner: st.as_json() for st in self.crl_statuses()}}

    async def _crl_watch(self) -> None:
        while True:
            try:
                await self.refresh_crls()
            except GatewayError as exc:  # e.g. the audit store: the next round tries again
                log.error("crl_watch_failed", code=exc.code, reason=exc.reason)
            await asyncio.sleep(self.settings.crl.check_seconds)

    async def refresh_crls(self, *, force_fetch: bool = False) -> list[crl.Fetched]:
        """One round of the CRL watch; returns the fetches it made.

        For every partner with a ``crl`` file and a source (``crl_url`` or a distribution
        point): fetch its CRL when due (worker 0 only under ``serve --workers``: every
        ``[crl] fetch_interval_seconds``, every few minutes once within the warning horizon
        or after a failure) and install a newer one; otherwise install the CRL file when it
        holds a newer CRL (what worker 0 or an operator wrote). Then warn, once per CRL,
        about those near or past nextUpdate.
        """
        s = self.settings
        now = asyncio.get_running_loop().time()
        horizon = timedelta(days=s.crl.warning_days)
        fetched: list[crl.Fetched] = []
        for pid, partner in sorted(s.partners.items()):
            trust = self.runtime.trust.partners.get(pid)
            if trust is None or trust.crl_path is None:
                continue
            fetcher = self.worker in (None, 0) and bool(crl.sources(partner, trust))
            if fetcher and (force_fetch or self._crls.due(pid, now)):
                result = await crl.fetch(
                    partner, trust, timeout=s.crl.fetch_timeout_seconds, max_bytes=s.crl.max_bytes
                )
                fetched.append(result)
                await self._crl_fetched(result)
                st = crl.status(self.runtime.trust.partners.get(pid, trust), horizon)
                fresh = result.error is None and st is not None and st.state == crl.OK
                self._crls.schedule(pid, now, s.crl.fetch_interval_seconds, soon=not fresh)
                continue
            newer = await asyncio.to_thread(crl.newer_file, trust)
            if newer is not None:
                await self._install_crl(pid, newer, source=str(trust.crl_path))
        for st in self.crl_statuses():
            if st.state != crl.OK and self._crls.first_warning(st):
                level = log.warning if st.state == crl.EXPIRING or st.cut_off else log.info
                level(
                    "crl_expiring" if st.state == crl.EXPIRING else "crl_stale",
                    partner=st.partner,
                    next_update=st.as_json()["next_update"],
                    hours_left=st.as_json()["hours_left"],
                    cut_off=st.cut_off,
                    file=str(st.path),
                )
        self._crls.rounds += 1
        return fetched

    @property
    def crl_rounds(self) -> int:
        """How many rounds the CRL watch (or ``refresh_crls``) has completed."""
        return self._crls.rounds

    async def _crl_fetched(self, result: crl.Fetched) -> None:
        """Install, log and audit the outcome of one fetch (the old CRL stays on failure)."""
        pid = result.partner
        if result.error is not None:
            err = result.error
            log.warning(
                "crl_fetch_failed", partner=pid, url=result.url, code=err.code, reason=err.reason
            )
            if self._crls.failing(pid, err.code):  # audited once per failure streak and code
                await self.runtime.audit.append(
                    AuditEvent(
                        event="crl_fetch_failed",
                        partner=pid,
                        outcome="failed",
                        code=err.code,
                        reason=err.reason,
                        actor="system",
                        details={"url": result.url or "", "kept": "the CRL in force"},
                    )
                )
            return
        self._crls.recovered(pid)
        if result.write_error is not None:
            log.warning("crl_write_failed", partner=pid, reason=result.write_error)
        if result.crl is None or not result.changed:
            log.debug("crl_unchanged", partner=pid, url=result.url)
            return
        await self._install_crl(pid, result.crl, source=result.url or "")

    async def _install_crl(
        self, partner_id: str, new: x509.CertificateRevocationList, *, source: str
    ) -> None:
        """Put ``new`` in force for the partner; close connections whose certificate it revokes."""
        async with self._reload_lock:
            rt = self.runtime
            current = rt.trust.partners.get(partner_id)
            try:
                if current is None or not crl.accept(new, current):
                    return  # the partner was removed, or a reload brought this CRL meanwhile
            except GatewayError:
                return  # a reload brought a newer one meanwhile
            trust = rt.trust.with_crl(partner_id, new)
            closing, kept = closures(trust, self.connections)
            trust.carry(kept)
            old_client = rt.client
            rt.trust = trust
            rt.client = self._new_client(self.settings, trust)
            self._retire(old_client, self.settings.delivery.timeout)
            for c in closing:
                c.transport.abort()
                self.connections.get(c.partner, set()).discard(c.transport)
            about = crl.describe(new)
            log.info("crl_fetched", partner=partner_id, source=source, closed=len(closing), **about)
            events = [
                AuditEvent(
                    event="connection_closed",
                    direction="inbound",
                    partner=c.partner,
                    outcome="closed",
                    code=c.error.code,
                    reason=c.error.reason,
                    actor="system",
                    details={"peer": peer_address(c.transport.get_extra_info("peername"))},
                )
                for c in closing
            ]
            events.append(
                AuditEvent(
                    event="crl_fetched",
                    partner=partner_id,
                    outcome="ok",
                    code=ErrorCode.CRL_INSTALLED,
                    reason=f"a newer CRL of {partner_id} is in force",
                    actor="system",
                    details={"source": source, **about},
                )
            )
            await rt.audit.append_many(events)

    async def _housekeep(self) -> None:
        """Hourly: forget duplicate claims and outbox entries past the replay window.

        The window counts from the claim, and an envelope may be dated up to the allowed
        skew ahead of it: a claim is kept for the replay window, the skew and an hour.
        """
        while True:
            try:
                gone = await self.runtime.store.housekeep(
                    time.time(), DUPLICATE_RETENTION_SECONDS + FUTURE_SKEW_SECONDS + 3600
                )
            except GatewayError as exc:
                log.warning("housekeeping_failed", code=exc.code, reason=exc.reason)
            else:
                if any(gone.values()):
                    log.info("housekeeping_done", **gone)
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    # ------------------------------------------------------------------ reload

    async def reload(self, actor: str) -> ReloadResult:
        """Re-read configuration and trust material; keep the old on any problem.

        Audited as ``operator_action`` with the actor, whether it worked or not.
        Under ``serve --workers``, worker 0 (the admin listener's) also has the
        supervisor reload the other workers.
        """
        if self.worker == 0 and not actor.startswith("signal:"):
            from gateway.service.workers import ask_supervisor_to_reload_others

            ask_supervisor_to_reload_others()
        async with self._reload_lock:
            try:
                material = await asyncio.to_thread(load_material, self.settings.path, self.settings)
            except GatewayError as exc:
                log.error("reload_failed", actor=actor, code=exc.code, reason=exc.reason)
                await self.runtime.audit.append(
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

    async def _follow_partners(self, partners: Sequence[str]) -> list[str]:
        """Declare and consume the outbound queue of every partner not consumed yet.

        Partners a reload added, and any whose consumer an earlier reload could not start
        (broker unreachable then). A removed partner's consumer stays: what is still
        queued for it is dead-lettered with ``PARTNER_UNKNOWN`` (the back office hears of
        it), not left unseen; added back, it keeps that one consumer.
        """
        relay = self.runtime.relay
        missing = [p for p in partners if not relay.consumes(relay.names.outbound_queue(p))]
        if not missing or self._outbound is None:
            return []
        outbound = self._outbound

        async def follow() -> None:
            await relay.add_partners(missing)
            for partner in missing:
                await relay.consume(relay.names.outbound_queue(partner), outbound.handler(partner))

        try:
            # bounded: a broker that stops answering must not hold the reload lock
            await asyncio.wait_for(follow(), timeout=relay.confirm_timeout)
        except (RelayError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, RelayError) else "the broker did not answer"
            log.warning("reload_consumers_failed", partners=",".join(missing), reason=reason)
            return [
                f"outbound queues of {', '.join(missing)} not consumed yet ({reason}); "
                "the next reload tries again"
            ]
        return []

    async def _record_signing_cert(
        self, audit: AuditLog, cert: x509.Certificate, actor: str
    ) -> None:
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

    async def _install(self, m: Material, actor: str) -> ReloadResult:
        old = self.settings
        if m.signer.cert != self.runtime.signer.cert:
            await self._record_signing_cert(self.runtime.audit, m.signer.cert, actor)
        closing, kept = closures(m.trust, self.connections)
        m.trust.carry(kept)
        rt = self.runtime
        old_client = rt.client
        # the swap: nothing awaits in between, so a request sees all old or all new
        self.settings = m.settings
        self.server_context = m.server_context
        self.guard.limits = m.settings.partner_api
        self.admin_auth = m.admin_auth
        self._own_certs = m.own_certs
        rt.settings = m.settings
        rt.trust = m.trust
        rt.signer = m.signer
        rt.audit.set_signer(m.signer)
        rt.client = self._new_client(m.settings, m.trust)
        self._retire(old_client, m.settings.delivery.timeout)
        for c in closing:
            c.transport.abort()
            self.connections.get(c.partner, set()).discard(c.transport)
        for partner in [p for p in self.connections if p not in m.settings.partners]:
            self.connections.pop(partner, None)
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
        events = [
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

    def _retire(self, client: PartnerLink, grace: float) -> None:
        """Close a replaced outbound client once its in-flight requests had time to end."""
        self._retired_clients.add(client)

        async def later() -> None:
            await asyncio.sleep(grace + 1.0)
            if client in self._retired_clients:
                self._retired_clients.discard(client)
                await client.close()

        tasks.spawn(later(), name="retire-partner-client")

    # ------------------------------------------------------------------ refusals

    def handshake_failed(self, exc: BaseException, peer: str) -> None:
        """Count and log a TLS handshake the TLS library (or the peer) broke off."""
        code, reason = handshake_reason(exc)
        self.handshake_failures[code] += 1
        log.warning("tls_handshake_failed", code=code, reason=reason, peer=peer)

    def auth_refused(self, exc: AuthError, peer: Any) -> None:
        """Log and audit a connection refused by the gate (never raises)."""
        address = peer if isinstance(peer, str) else peer_address(peer)
        self.auth_refusals[exc.code] += 1
        log.warning("connection_refused", code=exc.code, reason=exc.reason, peer=address)
        self._audit_soon(
            AuditEvent(
                event="auth_failure",
                direction="inbound",
                partner=exc.context.get("partner"),
                outcome="refused",
                code=exc.code,
                reason=exc.reason,
                details={"peer": address},
            )
        )

    def _audit_soon(self, event: AuditEvent) -> None:
        async def append() -> None:
            try:
                await self.runtime.audit.append(event)
            except AuditError:  # the audit log's health has logged the episode
                log.warning("audit_entry_lost", audit_event=event.event, code=event.code)

        tasks.spawn(append(), name="audit-auth-failure")

    # ------------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        """Stop accepting, finish in-flight deliveries within a bound, close cleanly."""
        rt = self.runtime
        for task in (self._watch, self._housekeeping):
            if task is not None:
                task.cancel()
        self.trimmer.stop()
        await rt.relay.stop_consuming()
        for server in self._servers:
            server.close()
        for raw in list(self.handshaking):
            raw.abort()
        if self._outbound is not None:
            left = await self._outbound.drain(SHUTDOWN_GRACE_SECONDS)
            if left:
                log.warning("shutdown_inflight_returned", count=left)
        for runner in self._runners:
            await runner.cleanup()
        for conns in self.connections.values():
            for transport in list(conns):
                transport.abort()
        for client in list(self._retired_clients):
            self._retired_clients.discard(client)
            await client.close()
        await rt.client.close()
        await rt.relay.close()
        await rt.audit.append(AuditEvent(event="stopped", outcome="ok", actor="system"))
        await rt.audit.close()
        await rt.store.close()
        log.info("gateway_stopped", gateway=self.settings.gateway_id)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: tasks.spawn(self.reload("signal:SIGHUP"), name="reload")
        )
        await self._stopping.wait()
        loop.remove_signal_handler(signal.SIGHUP)
        await self.stop()


async def _audit_writable(audit: AuditLog, url: str) -> bool:
    """The audit store answers, and (for SQLite) its file and directory are writable."""
    try:
        await audit.head()
    except GatewayError:
        return False
    return "://" in url or _file_writable(Path(url))


def _file_writable(path: Path) -> bool:
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")


def _preload_adapters() -> None:
    """Build every adapter's schemas now, so that no message waits for one.

    This takes seconds (the NCTS XSD 1.1 schemas above all), hence the two log lines.
    """
    import adapters

    names = adapters.available()
    log.info(
        "schemas_preloading",
        adapters=names,
        hint="takes several seconds; [gateway] preload_schemas = false builds them on first use",
    )
    started = time.monotonic()
    for name in names:
        preload = getattr(adapters.get(name), "preload", None)
        if callable(preload):
            preload()
    log.info("schemas_preloaded", adapters=names, seconds=round(time.monotonic() - started, 1))


async def _listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    setting: str,
    backlog: int = 128,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Bind and listen on ``host:port`` now; serve later (``Server.start_serving``).

    A port in use is a ``ConfigError`` naming the setting (``CONFIG_PORT_IN_USE``),
    never a traceback.
    """
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=backlog,
            ssl=ssl_context,
            start_serving=False,
        )
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        raise ConfigError(
            f"[{setting}] {host}:{port}: "
            + ("address already in use (another process listens there)" if in_use else str(exc)),
            code=ErrorCode.CONFIG_PORT_IN_USE if in_use else ErrorCode.CONFIG_LISTEN_FAILED,
        ) from None
    # asyncio would listen only when serving starts; until a socket listens, another
    # process may bind the same port too (SO_REUSEADDR) and one of them would fail late
    for sock in server.sockets:
        with socket.socket(fileno=os.dup(sock.fileno())) as same:
            same.listen(backlog)
    return server


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
