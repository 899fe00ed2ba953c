"""Readiness: whether this gateway can take traffic now (``/readyz``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from gateway.audit.log import AuditLog
from gateway.errors import GatewayError
from gateway.pipeline.runtime import Runtime


async def check_readiness(
    rt: Runtime, audit_url: str, own_certs: tuple[tuple[Path, x509.Certificate], ...]
) -> dict[str, bool]:
    """Broker connected, stores writable, own certificates within validity.

    A store is not ready while its writes fail (its health probes it meanwhile).
    """
    now = datetime.now(UTC)
    return {
        "broker": rt.relay.ready,
        "state": rt.store.health.healthy,
        "audit": rt.audit.health.healthy and await _audit_writable(rt.audit, audit_url),
        "certificates": all(
            c.not_valid_before_utc <= now <= c.not_valid_after_utc for _, c in own_certs
        ),
    }


async def _audit_writable(audit: AuditLog, url: str) -> bool:
    """The audit store answers, and (for SQLite) its file and directory are writable."""
    try:
        await audit.head()
    except GatewayError:
        return False
    return "://" in url or _file_writable(Path(url))


def _file_writable(path: Path) -> bool:
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
