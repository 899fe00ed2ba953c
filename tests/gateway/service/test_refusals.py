"""Refusals at the listeners: counted, logged and audited, never raised."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

from structlog.testing import capture_logs

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.errors import AuditError, AuthError, ErrorCode
from gateway.service.refusals import Refusals


class FakeAudit:
    """An audit log that keeps what is appended, or fails every append."""

    def __init__(self, *, failing: bool = False) -> None:
        self.events: list[AuditEvent] = []
        self.failing = failing

    async def append(self, event: AuditEvent) -> int:
        if self.failing:
            raise AuditError("the audit store is gone", code=ErrorCode.AUDIT_WRITE_FAILED)
        self.events.append(event)
        return len(self.events)


def _refusals(audit: FakeAudit) -> Refusals:
    return Refusals(lambda: cast(AuditLog, audit))


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_gate_refusal_is_counted_logged_and_audited_with_the_peer() -> None:
    """A refused connection counts under its code, logs the peer and is audited in a task."""
    audit = FakeAudit()
    refusals = _refusals(audit)
    exc = AuthError("pin mismatch", code=ErrorCode.AUTH_PIN_MISMATCH, partner="XA")
    with capture_logs() as logs:
        refusals.auth_refused(exc, ("192.0.2.7", 4433))
        await _settle()
    assert refusals.auth_refusals[ErrorCode.AUTH_PIN_MISMATCH] == 1
    assert [e["event"] for e in logs] == ["connection_refused"]
    assert logs[0]["peer"] == "192.0.2.7:4433"
    [event] = audit.events
    assert (event.event, event.code, event.partner) == ("auth_failure", "AUTH_PIN_MISMATCH", "XA")
    assert event.details == {"peer": "192.0.2.7:4433"}


async def test_a_broken_handshake_is_counted_and_logged_not_audited() -> None:
    """A handshake the TLS library broke off is counted by its code; no audit entry."""
    audit = FakeAudit()
    refusals = _refusals(audit)
    with capture_logs() as logs:
        refusals.handshake_failed(TimeoutError(), "192.0.2.8:5000")
        await _settle()
    assert refusals.handshake_failures[ErrorCode.TLS_TIMEOUT] == 1
    assert [e["event"] for e in logs] == ["tls_handshake_failed"]
    assert audit.events == []


async def test_an_admin_refusal_is_audited_as_operator_required() -> None:
    """An unauthenticated admin request is audited with the listener named."""
    audit = FakeAudit()
    _refusals(audit).admin_refused("no token", "127.0.0.1:1")
    await _settle()
    [event] = audit.events
    assert event.code == ErrorCode.AUTH_OPERATOR_REQUIRED
    assert event.details == {"peer": "127.0.0.1:1", "listener": "admin"}


async def test_a_failing_audit_log_loses_the_entry_without_raising() -> None:
    """When the audit store fails, the refusal still happens and the loss is logged."""
    refusals = _refusals(FakeAudit(failing=True))
    exc: Any = AuthError("revoked", code=ErrorCode.AUTH_REVOKED)
    with capture_logs() as logs:
        refusals.auth_refused(exc, "192.0.2.9:1")
        await _settle()
    assert [e["event"] for e in logs] == ["connection_refused", "audit_entry_lost"]
    assert refusals.auth_refusals[ErrorCode.AUTH_REVOKED] == 1


def test_an_ssl_error_maps_to_its_tls_code() -> None:
    """An untrusted certificate counts as ``TLS_CERTIFICATE_UNTRUSTED``."""
    refusals = _refusals(FakeAudit())
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    refusals.handshake_failed(error, "192.0.2.10:1")
    assert refusals.handshake_failures[ErrorCode.TLS_CERTIFICATE_UNTRUSTED] == 1
