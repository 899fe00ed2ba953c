"""Bounds on authenticated partner connections: a deadline in every state, caps per partner.

A connection the gate has admitted is always in one of these states, each with its
deadline (``[partner_api]`` settings)::

    idle ──first byte──▶ head ──head parsed──▶ request ──answered, keep-alive──▶ idle
     │                    │                       │
     │ idle_timeout       │ header_timeout        └──answered, not keep-alive──▶ closing
     ▼                    ▼                                                        │ CLOSING_SECONDS
    closed quietly       aborted; logged and audited, HTTP_HEADER_TIMEOUT          ▼ aborted quietly

In ``request`` the body is read under ``body_timeout`` by the handler that reads it
(``gateway.api.partner.read_body``), which closes the connection with ``Guard.close``
(``HTTP_BODY_TIMEOUT``, logged and audited). aiohttp's own ``keepalive_timeout`` does not
do this: it counts from the connection's start or its last answer whatever arrives
meanwhile (a head trickling in is not told from silence), closes without a word, and
does not look at a stalled body or at a client that does not read its answer. It is
set behind these deadlines, as a backstop only (``backstop_keepalive``).

Caps, each per process (``serve --workers`` runs several):

- ``max_connections``: partner connections, TLS handshakes included; one more is
  dropped before its handshake (``CONN_LIMIT``, logged and counted: nobody is
  identified yet, so nothing is audited, as for refused handshakes);
- ``max_connections_per_partner``: checked once the gate has identified the partner;
  one more is aborted, logged and audited (``CONN_PARTNER_LIMIT``);
- ``max_requests_per_partner``: requests being handled at once; one more is answered
  503 with Retry-After (``HTTP_REQUESTS_LIMIT``) and its connection closed. No receipt:
  nothing is final, the sender tries again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from gateway.audit.chain import AuditEvent
from gateway.config.models import ListenSection
from gateway.errors import ErrorCode

log = structlog.get_logger(__name__)


IDLE_CLOSED = ErrorCode.HTTP_IDLE_CLOSED


HEADER_TIMEOUT = ErrorCode.HTTP_HEADER_TIMEOUT


BODY_TIMEOUT = ErrorCode.HTTP_BODY_TIMEOUT


REQUESTS_LIMIT = ErrorCode.HTTP_REQUESTS_LIMIT


CONN_LIMIT = ErrorCode.CONN_LIMIT


CONN_PARTNER_LIMIT = ErrorCode.CONN_PARTNER_LIMIT


#: what a 503 for too many requests in flight asks the partner to wait, in seconds
BUSY_RETRY_AFTER_SECONDS = 1


#: how long a connection that will not be kept alive may take to end (aiohttp reads and
#: drops an unread body for ``LINGER_SECONDS`` before it closes)
LINGER_SECONDS = 2.0


CLOSING_SECONDS = LINGER_SECONDS + 1.0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionClock:
    """The state of one connection and the deadline of that state (see the module doc)."""

    def __init__(self, limits: Callable[[], ListenSection], expired: Callable[[str], None]) -> None:
        self._limits = limits
        self._expired = expired
        self.state = "new"
        self._timer: asyncio.TimerHandle | None = None

    def admitted(self) -> None:
        """The gate admitted the connection: it waits for its first request."""
        self._enter("idle", self._limits().idle_timeout)

    def data(self) -> None:
        """Bytes arrived; in ``idle`` they begin a request head."""
        if self.state == "idle":
            self._enter("head", self._limits().header_timeout)

    def request_started(self) -> None:
        """The head is parsed and the request is being handled."""
        self._enter("request", None)

    def request_finished(self, *, keep_alive: bool) -> None:
        """The handler answered; the connection waits for the next request, or ends."""
        if keep_alive:
            self._enter("idle", self._limits().idle_timeout)
        else:
            self._enter("closing", CLOSING_SECONDS)

    def stop(self) -> None:
        """The connection is gone."""
        self._enter("closed", None)

    def _enter(self, state: str, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state in ("closed", "expired"):
            return  # a handler finishing after its connection was closed changes nothing
        self.state = state
        if seconds is not None:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        state, self.state = self.state, "expired"
        self._expired(state)


@dataclass(eq=False, slots=True)
class Admitted:
    """One admitted partner connection."""

    partner: str
    peer: str
    transport: asyncio.Transport
    clock: ConnectionClock


class Guard:
    """Deadlines and caps of the partner listener; ``limits`` is swapped on reload."""

    def __init__(self, limits: ListenSection, audit: Callable[[AuditEvent], None]) -> None:
        self.limits = limits
        self._audit = audit
        #: admitted connections by their TLS transport (what ``request.transport`` is)
        self.connections: dict[asyncio.BaseTransport, Admitted] = {}
        self.per_partner: Counter[str] = Counter()
        #: requests being handled, by partner
        self.in_flight: Counter[str] = Counter()
        #: connections refused by a cap, by code
        self.refusals: Counter[str] = Counter()
        #: connections closed by a deadline, by code (``HTTP_IDLE_CLOSED`` …)
        self.closures: Counter[str] = Counter()
        #: requests answered 503 for too many in flight, by partner
        self.requests_refused: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Admitted connections now."""
        return len(self.connections)

    def backstop_keepalive(self) -> float:
        """aiohttp's ``keepalive_timeout`` for a new connection: behind every deadline here."""
        return self.limits.idle_timeout + self.limits.header_timeout + 60.0

    def full(self, handshaking: int, peer: str) -> bool:
        """Whether a new connection would pass ``max_connections`` (then logged and counted)."""
        cap = self.limits.max_connections
        if self.open + handshaking < cap:
            return False
        self.refusals[CONN_LIMIT] += 1
        log.warning(
            "connection_refused",
            code=CONN_LIMIT,
            reason=f"{cap} partner connections open (the cap)",
            peer=peer,
        )
        return True

    def admit(self, partner: str, peer: str, transport: asyncio.Transport) -> Admitted | None:
        """Register an identified connection, or refuse it (logged, audited) past the cap."""
        cap = self.limits.max_connections_per_partner
        if self.per_partner[partner] >= cap:
            self.refusals[CONN_PARTNER_LIMIT] += 1
            reason = f"partner {partner} already has {cap} connections open (the cap)"
            log.warning(
                "connection_refused",
                code=CONN_PARTNER_LIMIT,
                reason=reason,
                partner=partner,
                peer=peer,
            )
            self._audit(
                AuditEvent(
                    event="connection_refused",
                    direction="inbound",
                    partner=partner,
                    outcome="refused",
                    code=CONN_PARTNER_LIMIT,
                    reason=reason,
                    details={"peer": peer},
                )
            )
            return None
        # the clock calls back with ``admitted``, which exists by the time it can fire
        clock = ConnectionClock(lambda: self.limits, lambda state: self._expired(admitted, state))
        admitted = Admitted(partner, peer, transport, clock)
        self.connections[transport] = admitted
        self.per_partner[partner] += 1
        admitted.clock.admitted()
        return admitted

    def release(self, transport: asyncio.BaseTransport) -> None:
        """The connection is gone (whoever closed it)."""
        admitted = self.connections.pop(transport, None)
        if admitted is None:
            return
        admitted.clock.stop()
        self.per_partner[admitted.partner] -= 1
        if self.per_partner[admitted.partner] <= 0:
            del self.per_partner[admitted.partner]

    def close(self, transport: asyncio.Transport | None, code: str, reason: str) -> None:
        """Abort a connection for ``code`` (logged and audited)."""
        admitted = self.connections.get(transport) if transport is not None else None
        if admitted is None:
            if transport is not None:
                transport.abort()
            return
        admitted.clock.stop()
        admitted.transport.abort()
        self._closed(admitted, code, reason)

    def request_refused(self, admitted: Admitted, code: str, reason: str) -> None:
        """Log and audit a request refused before the application saw it (not valid HTTP)."""
        log.warning(
            "request_malformed",
            code=code,
            reason=reason,
            partner=admitted.partner,
            peer=admitted.peer,
        )
        self._audit(
            AuditEvent(
                event="rejected",
                direction="inbound",
                partner=admitted.partner,
                outcome="refused",
                code=code,
                reason=reason,
                details={"peer": admitted.peer},
            )
        )

    def _expired(self, admitted: Admitted, state: str) -> None:
        transport = admitted.transport
        if state in ("idle", "closing"):
            self.closures[IDLE_CLOSED] += 1
            log.debug("connection_idle_closed", partner=admitted.partner, peer=admitted.peer)
            # nothing is owed to an idle connection; one stuck writing is not waited for
            if state == "idle" and not transport.get_write_buffer_size():
                transport.close()
            else:
                transport.abort()
            return
        limits = self.limits
        reason = f"request head not complete within {limits.header_timeout:g} s"
        transport.abort()
        self._closed(admitted, HEADER_TIMEOUT, reason)

    def _closed(self, admitted: Admitted, code: str, reason: str) -> None:
        self.closures[code] += 1
        log.warning(
            "connection_closed",
            code=code,
            reason=reason,
            partner=admitted.partner,
            peer=admitted.peer,
        )
        self._audit(
            AuditEvent(
                event="connection_closed",
                direction="inbound",
                partner=admitted.partner,
                outcome="closed",
                code=code,
                reason=reason,
                details={"peer": admitted.peer},
            )
        )


GUARD = web.AppKey("guard", Guard)


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Move the connection's clock along its request; cap the partner's requests in flight."""
    guard = request.app[GUARD]
    admitted = guard.connections.get(request.transport) if request.transport else None
    if admitted is None:
        return await handler(request)
    partner = admitted.partner
    admitted.clock.request_started()
    keep_alive = False
    try:
        cap = guard.limits.max_requests_per_partner
        if guard.in_flight[partner] >= cap:
            guard.requests_refused[partner] += 1
            log.warning("request_refused", code=REQUESTS_LIMIT, partner=partner, limit=cap)
            busy = web.Response(
                status=503,
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
                text=f"{REQUESTS_LIMIT}: {cap} requests of {partner} in flight already; "
                "try again later\n",
            )
            busy.force_close()
            return busy
        guard.in_flight[partner] += 1
        try:
            response = await handler(request)
        except web.HTTPException:
            keep_alive = request.keep_alive and request.content.is_eof()
            raise
        finally:
            guard.in_flight[partner] -= 1
            if guard.in_flight[partner] <= 0:
                del guard.in_flight[partner]
        # an unread body would be taken for the next request's head: such a connection ends
        keep_alive = (
            request.keep_alive and response.keep_alive is not False and request.content.is_eof()
        )
        if not keep_alive and not response.prepared:
            response.force_close()
        return response
    finally:
        admitted.clock.request_finished(keep_alive=keep_alive)
