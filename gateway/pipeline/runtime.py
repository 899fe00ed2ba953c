"""The running gateway's parts, built once at start and handed to the pipelines."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from lxml import etree

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.config.models import Settings
from gateway.partner_client.client import PartnerLink
from gateway.policy.rate_limit import RateLimiter
from gateway.relay.message import RelayPort
from gateway.state.store import StateStore
from gateway.trust.identity import TrustStore
from gateway.xml.signature import Signer, document_c14n

log = structlog.get_logger(__name__)


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
    relay: RelayPort
    store: StateStore
    audit: AuditLog
    client: PartnerLink
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
