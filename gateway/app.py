"""Build and run one gateway: partner listener, admin listener, relay, consumers.

The partner listener is an aiohttp application served through a connection gate:
asyncio calls a protocol's ``connection_made`` only once the TLS handshake has
completed, so the gate identifies the partner from the verified client
certificate there and aborts the connection — before any HTTP byte is read or
written — when it does not belong to a partner (wrong CA, pins, revoked,
expired). Refusals are logged and audited with the peer address.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway import tasks
from gateway.audit import AuditEvent, AuditLog
from gateway.config import Settings
from gateway.delivery import PartnerClient
from gateway.errors import AuthError, GatewayError
from gateway.inbound import PIPELINE, RUNTIME, InboundPipeline, handle_messages
from gateway.outbound import OutboundPipeline
from gateway.relay import Names, Relay
from gateway.runtime import Runtime
from gateway.signing import Signer
from gateway.store import Store
from gateway.tls import TrustStore, peer_der

log = structlog.get_logger(__name__)

#: how long SIGTERM waits for in-flight deliveries before returning the rest to their queues
SHUTDOWN_GRACE_SECONDS = 10.0


class _ConnectionGate(asyncio.Protocol):
    """Wraps aiohttp's protocol; lets only authenticated partners reach it."""

    def __init__(self, inner: RequestHandler, gateway: Gateway) -> None:
        self._inner: RequestHandler | None = inner
        self._gateway = gateway
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        try:
            partner = self._gateway.runtime.trust.identify(
                peer_der(transport.get_extra_info("ssl_object"))
            )
        except AuthError as exc:
            self._inner = None
            transport.abort()
            self._gateway.auth_refused(exc, peer)
            return
        except ValueError as exc:  # a certificate cryptography cannot read
            self._inner = None
            transport.abort()
            self._gateway.auth_refused(AuthError(str(exc), code="AUTH_BAD_CERTIFICATE"), peer)
            return
        self._transport = transport
        self._gateway.connections.setdefault(partner, set()).add(transport)
        assert self._inner is not None
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            for conns in self._gateway.connections.values():
                conns.discard(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class Gateway:
    """One administration's gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime
        self.connections: dict[str, set[asyncio.BaseTransport]] = {}
        self.partner_port: int | None = None
        self.admin_port: int | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._runners: list[web.BaseRunner] = []
        self._outbound: OutboundPipeline | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Load material, connect the broker, open the stores, listen, consume."""
        s = self.settings
        if s.preload_schemas:
            await asyncio.to_thread(_preload_adapters)
        trust = TrustStore(s.partners)
        signer = Signer.from_files(s.signing.key, s.signing.cert)
        s.state_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(s.state_dir / "state.db")
        audit = await AuditLog.open(s.audit_url, gateway_id=s.gateway_id, checkpoint_signer=signer)
        relay = Relay(
            s.broker.url,
            Names(s.broker.prefix),
            confirm_timeout=s.broker.confirm_timeout,
            prefetch=s.delivery.concurrency,
            connection_name=f"maagw-{s.broker.prefix}{s.gateway_id}",
        )
        client = PartnerClient(s.partners, trust, s.tls, timeout=s.delivery.timeout,
                               connections_per_partner=s.delivery.concurrency)
        try:
            await relay.connect(s.partners)
        except GatewayError:
            await store.close()
            await audit.close()
            raise
        self.runtime = Runtime(s, trust, signer, relay, store, audit, client)
        await self._serve_partners()
        await self._serve_admin()
        self._outbound = OutboundPipeline(self.runtime)
        for partner in s.partners:
            await relay.consume(relay.names.outbound_queue(partner), self._outbound.handler(partner))
        await audit.append(AuditEvent(event="started", outcome="ok", actor="system",
                                      details={"partner_port": str(self.partner_port)}))
        log.info("gateway_started", gateway=s.gateway_id, partner_port=self.partner_port,
                 admin_port=self.admin_port, partners=sorted(s.partners))

    async def _serve_partners(self) -> None:
        s = self.settings
        app = web.Application(client_max_size=s.partner_api.max_body_bytes + 1)
        app[RUNTIME] = self.runtime
        app[PIPELINE] = InboundPipeline(self.runtime)
        app.router.add_post("/v1/messages", handle_messages)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        ctx = self.runtime.trust.server_context(s.tls)
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = lambda: _ConnectionGate(  # noqa: E731
            runner.server(), self  # type: ignore[misc]
        )
        server = await loop.create_server(
            factory, s.partner_api.host, s.partner_api.port, ssl=ctx, reuse_address=True,
            backlog=512, ssl_handshake_timeout=10,
        )
        self._servers.append(server)
        self.partner_port = server.sockets[0].getsockname()[1]

    async def _serve_admin(self) -> None:
        s = self.settings
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, s.admin.host, s.admin.port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn the bound port
        if isinstance(server, asyncio.base_events.Server) and server.sockets:
            self.admin_port = server.sockets[0].getsockname()[1]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "gateway": self.settings.gateway_id})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = {"broker": self.runtime.relay.ready}
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    def auth_refused(self, exc: AuthError, peer: Any) -> None:
        """Log and audit a connection refused by the gate (never raises)."""
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        log.warning("connection_refused", code=exc.code, reason=exc.reason, peer=address)
        tasks.spawn(
            self.runtime.audit.append(
                AuditEvent(event="auth_failure", direction="inbound",
                           partner=exc.context.get("partner"), outcome="refused", code=exc.code,
                           reason=exc.reason, details={"peer": address})
            ),
            name="audit-auth-failure",
        )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight deliveries within a bound, close cleanly."""
        rt = self.runtime
        await rt.relay.stop_consuming()
        for server in self._servers:
            server.close()
        if self._outbound is not None:
            left = await self._outbound.drain(SHUTDOWN_GRACE_SECONDS)
            if left:
                log.warning("shutdown_inflight_returned", count=left)
        for runner in self._runners:
            await runner.cleanup()
        await rt.client.close()
        await rt.relay.close()
        await rt.audit.append(AuditEvent(event="stopped", outcome="ok", actor="system"))
        await rt.audit.close()
        await rt.store.close()
        log.info("gateway_stopped", gateway=self.settings.gateway_id)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.stop()


def _preload_adapters() -> None:
    """Build every adapter's schemas now, so that no message waits for one."""
    import adapters

    for name in adapters.available():
        preload = getattr(adapters.get(name), "preload", None)
        if callable(preload):
            preload()
    log.info("schemas_preloaded", adapters=adapters.available())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
