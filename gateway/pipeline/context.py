"""What the steps share: the message in hand, what each step found, and the verdict or answer.

A step reads the context, adds what it found (the agreement, the decision, the signed
envelope …) and, when the message's fate is decided, sets ``verdict``; the pipeline then
stops and ``settle`` carries the verdict out (ack, retry, dead letter). Control data
(a partner's Retry-After, a receipt that did not verify) travels in verdicts, not in
exceptions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lxml import etree

from adapters.base import Adapter, Document
from gateway.audit.chain import AuditEvent
from gateway.config.agreement import Agreement
from gateway.contract import AmqpHeader
from gateway.errors import DeliveryError, ErrorCode, GatewayError, RelayError
from gateway.pipeline.runtime import Runtime, hexdigest
from gateway.policy.engine import Decision
from gateway.relay.message import IncomingMessage
from gateway.xml import envelope
from gateway.xml import signature as signing
from gateway.xml.envelope import Envelope, ReceiptEntry


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What the back office asked to send, read from the AMQP properties."""

    partner: str
    message_id: str
    message_type: str
    correlation_id: str | None
    agreement: str | None
    format: str
    attempt: int
    first_seen: float

    @classmethod
    def read(cls, partner: str, message: IncomingMessage) -> Outgoing:
        """Raises ``RelayError`` (``RELAY_NO_*``) when a property the contract needs is absent."""
        headers = message.headers or {}
        if not message.message_id:
            raise RelayError(
                "the AMQP message has no message_id", code=ErrorCode.RELAY_NO_MESSAGE_ID
            )
        if not message.type:
            raise RelayError(
                "the AMQP message has no type (message type)", code=ErrorCode.RELAY_NO_MESSAGE_TYPE
            )
        fmt = header(headers, AmqpHeader.FORMAT)
        if not fmt:
            raise RelayError(
                "the AMQP message has no x-maagw-format header", code=ErrorCode.RELAY_NO_FORMAT
            )
        return cls(
            partner=partner,
            message_id=str(message.message_id),
            message_type=str(message.type),
            correlation_id=str(message.correlation_id) if message.correlation_id else None,
            agreement=header(headers, AmqpHeader.AGREEMENT),
            format=fmt,
            attempt=int(str(headers.get(AmqpHeader.ATTEMPT, 1))),
            first_seen=float(str(headers.get(AmqpHeader.FIRST_SEEN, time.time()))),
        )


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A partner's receipt list with its evidence form.

    ``problem`` is None when the signature held against the partner's pinned signing
    certificates; otherwise it says why it did not (the list was read unverified).
    ``retry_after`` is the partner's Retry-After for envelopes it left out of the list.
    """

    receipt: envelope.Receipt
    evidence: bytes
    digest: str
    problem: GatewayError | None = None
    retry_after: float | None = None


# -- verdicts: what became of the message; ``settle`` carries them out


@dataclass(frozen=True, slots=True)
class Delivered:
    """The partner has the message (its verified receipt says accepted or duplicate)."""

    status: str
    code: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Dead-letter the message: refused here or by the partner, or given up on.

    ``audited``: the step that refused has written the refusal's audit entry already.
    """

    code: str
    reason: str
    status: Literal["rejected", "failed"] = "rejected"
    audited: bool = False


@dataclass(frozen=True, slots=True)
class Retry:
    """The partner could not take it now: send the same bytes again later (or give up)."""

    code: str
    reason: str
    retryable: bool = True
    #: how long the partner asked us to wait (its Retry-After), if it said
    retry_after: float | None = None

    @classmethod
    def of(cls, exc: DeliveryError) -> Retry:
        """The retry a partner-link failure asks for (whether, and not before when)."""
        return cls(exc.code, exc.reason, exc.retryable, exc.retry_after)


@dataclass(frozen=True, slots=True)
class Unverified:
    """The partner says it has the message, but its receipt does not verify."""

    receipt: VerifiedReceipt
    entry: envelope.ReceiptEntry


Verdict = Delivered | Refused | Retry | Unverified


@dataclass(slots=True)
class Outbound:
    """One back-office message on its way to a partner, as the steps fill it in."""

    rt: Runtime
    partner: str
    message: IncomingMessage
    out: Outgoing | None = None
    agreement: Agreement | None = None
    #: the back office's document as decoded, then as redacted for the partner
    document: Document | None = None
    decision: Decision | None = None
    #: the exchange format's adapter, the encoded payload and the unsigned envelope
    exchange: Adapter | None = None
    payload: bytes = b""
    unsigned: etree._Element | None = None
    #: the signed envelope and its digest (``sha256:<hex>``): built now or found in the outbox
    signed: bytes | None = None
    digest: str = ""
    #: the envelope's evidence form (exclusive C14N) and its plain SHA-256, when built now
    evidence: bytes = b""
    evidence_digest: str = ""
    #: the envelope was signed earlier (a retry): steps that build it are skipped
    resent: bool = False
    verdict: Verdict | None = None

    @property
    def agreement_id(self) -> str | None:
        return self.agreement.id if self.agreement else None

    @property
    def retention_days(self) -> int:
        return self.agreement.retention_days if self.agreement else 3650

    def entry(
        self, event: str, outcome: str, code: str | None, reason: str | None, **details: Any
    ) -> AuditEvent:
        """An audit entry about this message (``out`` must have been read)."""
        out = self.out
        assert out is not None
        return AuditEvent(
            event=event,
            direction="outbound",
            partner=out.partner,
            agreement=self.agreement_id,
            message_type=out.message_type,
            message_id=out.message_id,
            correlation_id=out.correlation_id,
            outcome=outcome,
            code=code,
            reason=reason,
            details=details,
        )


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """An AMQP header as text (``None`` when absent or empty)."""
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if value else None


# -- inbound

#: what a 503 asks the sender to wait before it tries again
RETRY_AFTER_SECONDS = 5.0


#: the digest quoted for a request refused before any envelope was read
EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


@dataclass(slots=True)
class Inbound:
    """One envelope from an authenticated partner, as the steps fill it in.

    When a step decides what the partner is answered for it, it sets ``status`` (and
    ``entry``, the receipt entry, for a final answer; none means "try again later").
    Audit entries are added by the step that decides (``audit``) and written together
    with the receipt's, before the answer.
    """

    rt: Runtime
    partner: str
    body: bytes
    digest: str = ""
    message_id: str = "-"
    root: etree._Element | None = None
    evidence: bytes = b""
    verified: signing.Verified | None = None
    env: Envelope | None = None
    #: the claim on (sender, message id) is ours: released if the steps fail
    claimed: bool = False
    possible_duplicate: bool = False
    agreement: Agreement | None = None
    document: Document | None = None
    target: Adapter | None = None
    translated: bytes = b""
    #: the answer: an HTTP status, the receipt entry (None: try again later), Retry-After
    status: int | None = None
    entry: ReceiptEntry | None = None
    retry_after: float | None = None
    #: published: the claim is marked published once the receipt is kept
    published: bool = False
    entries: list[AuditEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = "sha256:" + hashlib.sha256(self.body).hexdigest()

    def answer(
        self, status: int, entry: ReceiptEntry | None, retry_after: float | None = None
    ) -> None:
        self.status, self.entry, self.retry_after = status, entry, retry_after

    def later(self, status: int = 503, retry_after: float = RETRY_AFTER_SECONDS) -> None:
        """Answer "try again later" (no receipt entry)."""
        self.answer(status, None, retry_after)

    def audit(
        self, event: str, outcome: str, code: str | None, reason: str | None, **details: str
    ) -> AuditEvent:
        """Note an audit entry about this envelope (written with the receipt's)."""
        head = self.head
        entry = AuditEvent(
            event=event,
            direction="inbound",
            partner=head.sender,
            agreement=head.agreement,
            message_type=head.message_type,
            message_id=head.message_id,
            correlation_id=head.correlation_id,
            envelope_digest=hexdigest(self.digest),
            outcome=outcome,
            code=code,
            reason=reason,
            details=details,
        )
        self.entries.append(entry)
        return entry

    @property
    def head(self) -> envelope.Header:
        assert self.env is not None, "the verify step comes first"
        return self.env.header


@dataclass(frozen=True, slots=True)
class Reply:
    """What the partner is answered: status, headers and the signed receipt list (if any)."""

    status: int
    headers: dict[str, str]
    body: bytes = b"try again later\n"
    content_type: str = "text/plain"
