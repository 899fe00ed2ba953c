"""The partner listener's connection gate: TLS handshake, then identity, then HTTP.

The partner listener accepts plain TCP and runs the TLS handshake itself
(``loop.start_tls``) so that a handshake the TLS library refuses is counted and logged
with the peer's address, each new connection uses the *current* server context (which a
reload swaps), and a connection whose verified client certificate belongs to no partner
is aborted before any HTTP byte is read or written.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

from aiohttp.web_protocol import RequestHandler

from gateway import tasks
from gateway.api.guard import ConnectionClock, Guard
from gateway.errors import AuthError, ErrorCode
from gateway.pipeline.runtime import Runtime
from gateway.trust import tls_transport
from gateway.trust.identity import peer_der

#: a TLS handshake not finished in this time is dropped (and counted)
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class Trimmer(Protocol):
    """Returns memory to the system after bursts of closed connections."""

    def closed(self) -> None: ...


class GateHost(Protocol):
    """What the gate needs from the running gateway."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def guard(self) -> Guard: ...

    @property
    def trimmer(self) -> Trimmer: ...

    @property
    def server_context(self) -> ssl.SSLContext: ...

    @property
    def handshaking(self) -> set[asyncio.Transport]:
        """Raw transports whose TLS handshake is under way."""
        ...

    @property
    def connections(self) -> dict[str, set[asyncio.Transport]]:
        """Partner -> its open, authenticated connections."""
        ...

    def http_handler(self, **kwargs: Any) -> RequestHandler: ...

    def handshake_failed(self, exc: BaseException, peer: str) -> None: ...

    def auth_refused(self, exc: AuthError, peer: Any) -> None: ...


class ConnectionGate(asyncio.Protocol):
    """One partner connection: TLS handshake, then identity, then aiohttp's protocol."""

    def __init__(self, gateway: GateHost) -> None:
        self._gateway = gateway
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._peer = "-"
        self._early: list[bytes] = []
        self._lost = False
        self._clock: ConnectionClock | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the plain TCP transport: stop it reading until the TLS layer takes over
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._peer = peer_address(transport.get_extra_info("peername"))
        if self._gateway.guard.full(len(self._gateway.handshaking), self._peer):
            # dropped before the handshake: its buffers are never allocated
            transport.abort()
            return
        self._gateway.handshaking.add(transport)
        tasks.spawn(self._handshake(transport), name="tls-handshake")

    async def _handshake(self, raw: asyncio.Transport) -> None:
        gw = self._gateway
        try:
            tls = await tls_transport.start_tls(
                raw, self, gw.server_context, handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS
            )
        except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
            gw.handshake_failed(exc, self._peer)
            gw.trimmer.closed()
            return
        finally:
            gw.handshaking.discard(raw)
        if tls is None or self._lost:
            return
        self._admit(tls)

    def _admit(self, transport: asyncio.Transport) -> None:
        gw = self._gateway
        try:
            partner = gw.runtime.trust.authenticate(
                peer_der(transport.get_extra_info("ssl_object"))
            )
        except AuthError as exc:
            self._refuse(transport, exc)
            return
        except ValueError as exc:  # a certificate cryptography cannot read
            self._refuse(transport, AuthError(str(exc), code=ErrorCode.AUTH_BAD_CERTIFICATE))
            return
        admitted = gw.guard.admit(partner, self._peer, transport)
        if admitted is None:  # the partner's connection cap (logged and audited)
            self._early.clear()
            transport.abort()
            return
        self._transport = transport
        self._clock = admitted.clock
        gw.connections.setdefault(partner, set()).add(transport)
        self._inner = gw.http_handler(
            on_refused=lambda code, reason: gw.guard.request_refused(admitted, code, reason)
        )
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)

    def _refuse(self, transport: asyncio.Transport, exc: AuthError) -> None:
        self._early.clear()
        transport.abort()
        self._gateway.auth_refused(exc, self._peer)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            assert self._clock is not None
            self._clock.data()
            self._inner.data_received(data)
        elif not self._lost:
            # application data can arrive with the client's Finished, before _admit runs
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._early.clear()
        if self._transport is not None:
            for conns in self._gateway.connections.values():
                conns.discard(self._transport)
            self._gateway.guard.release(self._transport)
            self._gateway.trimmer.closed()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


#: OpenSSL reasons -> the stable code a handshake failure is counted under
_TLS_CODES = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": ErrorCode.TLS_NO_CERTIFICATE,
    "NO_CERTIFICATE_RETURNED": ErrorCode.TLS_NO_CERTIFICATE,
    "CERTIFICATE_VERIFY_FAILED": ErrorCode.TLS_CERTIFICATE_UNTRUSTED,
    "UNSUPPORTED_PROTOCOL": ErrorCode.TLS_OLD_PROTOCOL,
    "WRONG_VERSION_NUMBER": ErrorCode.TLS_NOT_TLS,
    "HTTP_REQUEST": ErrorCode.TLS_NOT_TLS,
    "NO_SHARED_CIPHER": ErrorCode.TLS_NO_SHARED_CIPHER,
}


def handshake_reason(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ErrorCode.TLS_CERTIFICATE_UNTRUSTED, str(exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.__class__.__name__)
        return _TLS_CODES.get(reason, f"TLS_{reason}"), reason.lower().replace("_", " ")
    if isinstance(exc, ConnectionAbortedError | asyncio.TimeoutError | TimeoutError):
        return ErrorCode.TLS_TIMEOUT, str(exc) or "handshake timed out"
    return ErrorCode.TLS_CONNECTION_LOST, f"{exc.__class__.__name__}: {exc}".rstrip(": ")


def peer_address(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
