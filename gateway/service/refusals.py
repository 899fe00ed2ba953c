"""Refusals at the listeners: counted, logged and audited without holding up the refusal.

A TLS handshake the TLS library broke off is counted and logged (there is no partner to
audit yet); a connection the gate refused after the handshake, and an admin request
without authentication, are also audited — in a task of their own, so that a slow or
failing audit store never delays the refusal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from gateway import tasks
from gateway.api.gate import handshake_reason, peer_address
from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.errors import AuditError, AuthError, ErrorCode

log = structlog.get_logger(__name__)


class Refusals:
    """Counts, logs and audits what the partner and admin listeners refuse.

    Args:
        audit: the audit log in force (called when an entry is written).
    """

    def __init__(self, audit: Callable[[], AuditLog]) -> None:
        self._audit = audit
        #: TLS handshakes refused inside the TLS library, by code (``TLS_NO_CERTIFICATE`` …)
        self.handshake_failures: Counter[str] = Counter()
        #: connections refused by the gate after the handshake, by code (``AUTH_PIN_MISMATCH`` …)
        self.auth_refusals: Counter[str] = Counter()

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
        self.audit_soon(
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

    def admin_refused(self, reason: str, peer: str) -> None:
        """Log and audit a request the admin listener refused for lack of authentication."""
        log.warning("admin_refused", reason=reason, peer=peer)
        self.audit_soon(
            AuditEvent(
                event="auth_failure",
                outcome="refused",
                code=ErrorCode.AUTH_OPERATOR_REQUIRED,
                reason=reason,
                details={"peer": peer, "listener": "admin"},
            )
        )

    def audit_soon(self, event: AuditEvent) -> None:
        """Append ``event`` to the audit log in a task; a failure is logged, never raised."""

        async def append() -> None:
            try:
                await self._audit().append(event)
            except AuditError:  # the audit log's health has logged the episode
                log.warning("audit_entry_lost", audit_event=event.event, code=event.code)

        tasks.spawn(append(), name="audit-auth-failure")
