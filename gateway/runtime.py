"""The running gateway's parts, built once at start and handed to the pipelines."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from lxml import etree

from gateway.audit import AuditEvent, AuditLog
from gateway.config import Settings
from gateway.delivery import PartnerClient
from gateway.policy import RateLimiter
from gateway.relay import Relay
from gateway.signing import Signer, document_c14n
from gateway.store import Store
from gateway.tls import TrustStore

log = structlog.get_logger(__name__)

#: how long (sender, message id) is remembered; envelopes older than this are SIG_STALE
DUPLICATE_RETENTION_SECONDS = 7 * 24 * 3600
#: how far in the future an envelope's creation time may lie (clock skew)
FUTURE_SKEW_SECONDS = 600


def canonical(root: etree._Element) -> tuple[bytes, str]:
    """The evidence form of a signed document and its digest.

    Evidence is the exclusive C14N of the whole document (what the signature and
    the receipt digest cover), so the evidence's plain SHA-256 is the receipt's
    digest, and the stored bytes still verify with any XML Signature tool.
    """
    data = document_c14n(root)
    return data, hashlib.sha256(data).hexdigest()


def hexdigest(digest: str) -> str:
    """``sha256:<hex>`` as the audit log writes it: the plain hex."""
    return digest.removeprefix("sha256:")


@dataclass
class Runtime:
    """Everything a pipeline needs; ``trust`` and ``settings`` are swapped on reload."""

    settings: Settings
    trust: TrustStore
    signer: Signer
    relay: Relay
    store: Store
    audit: AuditLog
    client: PartnerClient
    limiter: RateLimiter = field(default_factory=RateLimiter)

    @property
    def gateway_id(self) -> str:
        return self.settings.gateway_id

    async def record(self, *events: AuditEvent) -> None:
        """Append audit entries; returns once they are durable."""
        await self.audit.append_many(list(events))

    def event(self, status: str, **fields: Any) -> dict[str, Any]:
        """A back-office status event body (JSON-ready)."""
        body: dict[str, Any] = {
            "status": status,
            "gateway": self.gateway_id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        body.update({k: v for k, v in fields.items() if v is not None})
        return body
