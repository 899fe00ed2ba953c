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
- an admitted connection is bounded by the guard (``gateway.api.guard``): the partner's
  connection and request caps, and a deadline for every state of the connection
  (waiting, receiving a head, receiving a body), fed by the bytes the gate passes on.

Reload (SIGHUP, or ``POST /v1/reload`` on the admin listener) re-reads the
configuration and trust material, swaps it in, and closes only the connections
of removed partners and revoked certificates; see ``gateway.service.reload``.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from cryptography import x509

from gateway import tasks
from gateway.api import admin
from gateway.api.gate import ConnectionGate
from gateway.api.guard import GUARD, LINGER_SECONDS, Guard, track_requests
from gateway.api.partner import PIPELINE, RUNTIME, _ping, handle_messages
from gateway.api.strict_http import handler_factory, hide_server
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.config.models import Settings
from gateway.errors import AuthError, GatewayError
from gateway.pipeline.inbound import InboundPipeline
from gateway.pipeline.outbound import OutboundPipeline
from gateway.pipeline.runtime import Runtime
from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from gateway.service import expiry
from gateway.service.crls import CrlKeeper
from gateway.service.housekeeping import housekeep
from gateway.service.leader import Leadership
from gateway.service.listeners import is_loopback, listen
from gateway.service.memory import MemoryTrimmer
from gateway.service.readiness import check_readiness
from gateway.service.refusals import Refusals
from gateway.service.reload import (
    Reloader,
    ReloadResult,
    new_client,
    own_certificates,
    record_signing_cert,
)
from gateway.state.store import is_postgres, open_state
from gateway.trust import crl
from gateway.trust.identity import TrustStore
from gateway.xml.signature import Signer

log = structlog.get_logger(__name__)


#: how long SIGTERM waits for in-flight deliveries before returning the rest to their queues
SHUTDOWN_GRACE_SECONDS = 10.0


class Gateway:
    """One administration's gateway process."""

    def __init__(
        self, settings: Settings, *, admin_tls: bool | None = None, worker: int | None = None
    ) -> None:
        self.settings = settings
        #: index of this process under ``serve --workers N`` (None: the only process)
        self.worker = worker
        #: this run of the process (claims made now carry it; see StateStore.take_over_claims)
        self.boot = uuid.uuid4().hex[:12]
        self.runtime: Runtime
        #: partner -> its open, authenticated connections
        self.connections: dict[str, set[asyncio.Transport]] = {}
        #: refused handshakes, connections and admin requests: counted, logged, audited
        self.refusals = Refusals(lambda: self.runtime.audit)
        #: TLS handshakes refused inside the TLS library, by code (``TLS_NO_CERTIFICATE`` …)
        self.handshake_failures: Counter[str] = self.refusals.handshake_failures
        #: connections refused by the gate after the handshake, by code (``AUTH_PIN_MISMATCH`` …)
        self.auth_refusals: Counter[str] = self.refusals.auth_refusals
        #: deadlines and caps of partner connections (its counters: refusals, closures …)
        self.guard = Guard(settings.partner_api, self.refusals.audit_soon)
        #: returns the memory of closed connections to the system
        self.trimmer = MemoryTrimmer()
        self.partner_port: int | None = None
        self.admin_port: int | None = None
        self.admin_tls = settings.admin.tls if admin_tls is None else admin_tls
        self.server_context: ssl.SSLContext
        self.admin_auth: admin.AdminAuth
        #: this gateway's own certificates (readiness checks their validity)
        self.own_certs: tuple[tuple[Path, x509.Certificate], ...] = ()
        self._http_factory: Any = None
        self.handshaking: set[asyncio.Transport] = set()
        self._servers: list[asyncio.Server] = []
        self._partner_server: asyncio.Server | None = None
        self._admin_server: asyncio.Server | None = None
        self._admin_factory: Any = None
        self._runners: list[web.BaseRunner] = []
        self._outbound: OutboundPipeline | None = None
        self._stopping = asyncio.Event()
        #: swaps in new configuration and trust material (a reload, a newer CRL)
        self.reloader = Reloader(self)
        #: whether this process is its administration's leader: instances sharing PostgreSQL
        #: sign checkpoints and fetch CRLs one at a time (see gateway.service.leader)
        self.leadership = Leadership(
            _shared_database(settings),
            settings.gateway_id,
            instance=self.instance,
            on_change=self._leadership_changed,
        )
        #: fetches and installs the partners' CRLs (worker 0 of the leader fetches)
        self.crls = CrlKeeper(
            lambda: self.settings,
            lambda: self.runtime,
            self.reloader,
            fetches=lambda: worker in (None, 0) and self.leadership.leads,
        )
        self._watch: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def gateway_id(self) -> str:
        return self.settings.gateway_id

    @property
    def instance(self) -> str:
        """This process's name among the administration's gateways (claims carry it)."""
        base = self.settings.instance_id
        return base if self.worker is None else f"{base}/w{self.worker}"

    @property
    def outbound(self) -> OutboundPipeline | None:
        """The pipeline consuming the outbound queues (None before the start)."""
        return self._outbound

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
        self.own_certs = own_certificates(s)
        signer = Signer.from_files(s.signing.key, s.signing.cert)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        store = await open_state(s.state_location, owner=self.instance, boot=self.boot)
        taken = await store.take_over_claims()
        if taken:
            # this instance's previous process died while publishing these: the senders'
            # next attempts are published at once, marked as possible duplicates
            log.warning("claims_taken_over", count=taken, instance=self.instance)
        audit = await AuditLog.open(s.audit_url, gateway_id=s.gateway_id, checkpoint_signer=signer)
        audit.set_leadership(lambda: self.leadership.leads)
        self.leadership.start()
        await record_signing_cert(audit, signer.cert, "system")
        relay = Relay(
            s.broker.urls,
            Names(s.broker.prefix),
            confirm_timeout=s.broker.confirm_timeout,
            prefetch=s.broker.prefetch,
            connection_name=f"maagw-{s.broker.prefix}{s.gateway_id}",
            reconnect_min_seconds=s.broker.reconnect_min_seconds,
            reconnect_max_seconds=s.broker.reconnect_max_seconds,
        )
        try:
            await relay.connect(s.partners)
        except GatewayError:
            await store.close()
            await audit.close()
            raise
        self.runtime = Runtime(s, trust, signer, relay, store, audit, new_client(s, trust))
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
            # a state store shared by instances is kept by the leader alone
            shared = is_postgres(str(s.state_location))
            self._housekeeping = tasks.spawn(
                housekeep(self.runtime.store, leads=lambda: not shared or self.leadership.leads),
                name="state-housekeeping",
            )
        log.info(
            "gateway_started",
            gateway=s.gateway_id,
            partner_port=self.partner_port,
            admin_port=self.admin_port,
            admin_tls=self.admin_tls,
            partners=sorted(s.partners),
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
        self._partner_server = await listen(
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
            self._admin_server = await listen(
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
        if clear and self.admin_auth.token is not None and not is_loopback(s.admin.host):
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
        return await check_readiness(self.runtime, self.settings.audit_url, self.own_certs)

    async def readiness_details(self) -> dict[str, Any]:
        """What ``/readyz`` shows beside the checks: each partner's CRL and its nextUpdate.

        A CRL near or past its nextUpdate does not make the gateway unready: it concerns
        one partner, and an unready instance is taken out of service for every partner.
        """
        return {"crls": {st.partner: st.as_json() for st in self.crls.statuses()}}

    async def reload(self, actor: str) -> ReloadResult:
        """Re-read configuration and trust material; keep the old on any problem (``Reloader``)."""
        return await self.reloader.reload(actor)

    def admin_refused(self, reason: str, peer: str) -> None:
        """Log and audit a request the admin listener refused for lack of authentication."""
        self.refusals.admin_refused(reason, peer)

    # ------------------------------------------------------------------ gate target

    def handshake_failed(self, exc: BaseException, peer: str) -> None:
        """Count and log a TLS handshake the TLS library (or the peer) broke off."""
        self.refusals.handshake_failed(exc, peer)

    def auth_refused(self, exc: AuthError, peer: Any) -> None:
        """Log and audit a connection refused by the gate (never raises)."""
        self.refusals.auth_refused(exc, peer)

    # ------------------------------------------------------------------ certificates and CRLs

    def cert_expiry(self) -> dict[str, int]:
        """Days to expiry of every configured certificate file (the fewest, for a bundle)."""
        return expiry.cert_expiry(self.settings)

    def crl_statuses(self, now: datetime | None = None) -> list[crl.CrlStatus]:
        """How fresh every partner's CRL in force is (partners without a CRL are left out)."""
        return self.crls.statuses(now)

    async def refresh_crls(self, *, force_fetch: bool = False) -> list[crl.Fetched]:
        """One round of the CRL watch; returns the fetches it made (``CrlKeeper.refresh``)."""
        return await self.crls.refresh(force_fetch=force_fetch)

    @property
    def crl_rounds(self) -> int:
        """How many rounds the CRL watch (or ``refresh_crls``) has completed."""
        return self.crls.rounds

    async def _watch_trust(self) -> None:
        """The certificate expiry watch and the CRL watch, in one task (cancelled together)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(expiry.watch_expiry(lambda: self.settings), name="cert-expiry-watch")
            group.create_task(self.crls.watch(), name="crl-watch")

    # ------------------------------------------------------------------ lifecycle

    def _leadership_changed(self, leads: bool) -> None:
        """A new leader signs the checkpoint that is due at once."""
        log.info("leadership_changed", leads=leads, instance=self.instance)
        runtime = getattr(self, "runtime", None)
        if leads and runtime is not None:
            runtime.audit.leadership_changed()

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
        await self.reloader.close_retired()
        await rt.client.close()
        await rt.relay.close()
        await rt.audit.append(AuditEvent(event="stopped", outcome="ok", actor="system"))
        await rt.audit.close()
        await self.leadership.stop()
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


def _shared_database(settings: Settings) -> str | None:
    """The PostgreSQL the administration's instances share (state, else audit), if any."""
    for url in (str(settings.state_location), settings.audit_url):
        if is_postgres(url):
            return url
    return None
