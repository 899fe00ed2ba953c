"""Outbound: a back-office message on ``maagw.outbound.<partner>`` → a signed envelope there.

The steps, in order (``OutboundPipeline.steps``), each a function over one ``Outbound`` context:

1. ``read``: the AMQP properties (``message_id``, type, ``x-maagw-format`` are required).
2. ``agreement``: the agreement it travels under; an envelope already signed for this id
   (a retry, maybe after a restart) is taken from the outbox, and the steps that build one
   are skipped: every attempt sends identical bytes.
3. ``decide``: decode with the back office's adapter, evaluate the agreement policy, audit
   the decision; an allowed message waits for the agreement's rate limit.
4. ``redact``, 5. ``encode`` (the agreement's exchange format), 6. ``envelope``, 7. ``sign``.
8. ``store``: the envelope's evidence and the outbox entry, before the first attempt.
9. ``send``: POST over mutual TLS (alone or in a batch); the signed receipt is verified
   against the partner's pinned signing certificates, its digest must be that of what was
   sent; the receipt is kept and audited.

A step that decides the message's fate sets a verdict; ``settle`` carries it out and is
the only place where a delivery is acked, retried or dead-lettered (see ``settle.py``).
Refusals raised by a step (policy, translation, envelope, signing) become a dead letter,
a failure of the partner link a retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

import adapters
from adapters.base import Document
from gateway.audit.chain import AuditEvent
from gateway.contract import REPLY_TYPES
from gateway.errors import (
    AdapterError,
    DeliveryError,
    EnvelopeError,
    ErrorCode,
    PolicyViolation,
    RelayError,
    SignatureError,
    StoreError,
)
from gateway.pipeline.batching import Batcher
from gateway.pipeline.context import (
    Delivered,
    Outbound,
    Outgoing,
    Refused,
    Retry,
    Unverified,
    VerifiedReceipt,
)
from gateway.pipeline.receipts import DELIVERED, post_and_verify
from gateway.pipeline.runtime import Runtime, canonical, hexdigest
from gateway.pipeline.settle import give_back, settle, settle_failure
from gateway.policy.engine import PolicyRequest, evaluate, find_agreement
from gateway.policy.redaction import apply_redactions
from gateway.relay.message import IncomingMessage
from gateway.xml.envelope import Header, build_envelope

log = structlog.get_logger(__name__)

Step = Callable[[Outbound], Awaitable[None]]


#: how long a message waits for a failing store to come back before it is put aside
STORE_WAIT_SECONDS = 2.0


#: what a step may raise to refuse the message (dead-lettered with its code)
REFUSALS = (AdapterError, PolicyViolation, EnvelopeError, SignatureError)


async def read(ctx: Outbound) -> None:
    """The AMQP properties; a message for a partner no longer configured is refused."""
    try:
        ctx.out = Outgoing.read(ctx.partner, ctx.message)
    except RelayError as exc:  # the back office broke the contract: nothing to retry
        ctx.verdict = Refused(exc.code, exc.reason)
        return
    if ctx.partner not in ctx.rt.settings.partners:
        # removed by a reload while its queue still held messages
        ctx.verdict = Refused(
            ErrorCode.PARTNER_UNKNOWN,
            f"partner {ctx.partner} is no longer configured",
            status="failed",
        )


async def agreement(ctx: Outbound) -> None:
    """The agreement, and the envelope signed earlier for this message id, if any."""
    rt, out = ctx.rt, _out(ctx)
    ctx.agreement = find_agreement(
        rt.settings.agreements, out.agreement, rt.gateway_id, out.partner, out.message_type
    )
    if ctx.agreement is not None:
        structlog.contextvars.bind_contextvars(agreement=ctx.agreement.id)
    for health in (rt.store.health, rt.audit.health):
        if not await health.wait(STORE_WAIT_SECONDS):
            # known to fail right now: do not even try; the episode is logged already
            raise StoreError(
                f"{health.name}: {health.last_error}", code=ErrorCode.STORE_UNAVAILABLE
            )
    stored = await rt.store.outbox_get(out.message_id)
    if stored is not None:
        ctx.signed, ctx.digest = stored
        ctx.resent = True


async def decide(ctx: Outbound) -> None:
    """Decode, evaluate the agreement policy and audit the decision; wait for a rate token."""
    rt, out = ctx.rt, _out(ctx)
    source = adapters.get(out.format)
    document = source.decode(ctx.message.body, message_type=out.message_type)
    answers = None
    if out.message_type in REPLY_TYPES and ctx.agreement is not None:
        answers = bool(out.correlation_id) and await rt.store.knows_request(
            ctx.agreement.id, out.partner, out.correlation_id or ""
        )
    decision = evaluate(
        ctx.agreement,
        PolicyRequest(
            direction="outbound",
            sender=rt.gateway_id,
            receiver=out.partner,
            message_type=out.message_type,
            categories=source.categories(document),
            declared_categories=None,
            size=len(ctx.message.body),
            payload_format=out.format,
            at=datetime.now(UTC),
            purpose=_str(document.body.get("purpose")),
            legal_basis=_str(document.body.get("legalBasis")),
            answers_known_request=answers,
        ),
    )
    outcome = "allow" if decision.allowed else "deny"
    decided = ctx.entry(
        "policy_decision", outcome, decision.code, decision.reason, rule=decision.rule
    )
    if not decision.allowed:
        await rt.record(decided)
        ctx.verdict = Refused(decision.code, decision.reason)
        return
    # outbound rate limits are back-pressure: wait for a token, never refuse; only allowed
    # messages take one
    assert ctx.agreement is not None  # an allow names its agreement
    await _take_token(rt, ctx.agreement, out.partner)
    await rt.record(decided)
    ctx.document, ctx.decision = document, decision


async def redact(ctx: Outbound) -> None:
    """Remove what the agreement says the partner may not see."""
    document, decision = ctx.document, ctx.decision
    assert document is not None and decision is not None
    if decision.redactions:  # nothing to remove: no copy of the body
        ctx.document = Document(
            document.message_type,
            apply_redactions(document.body, decision.redactions),
            document.attachments,
        )


async def encode(ctx: Outbound) -> None:
    """The payload in the agreement's exchange format."""
    assert ctx.agreement is not None and ctx.document is not None
    ctx.exchange = adapters.get(ctx.agreement.exchange_format)
    ctx.payload = ctx.exchange.encode(ctx.document)


async def envelope(ctx: Outbound) -> None:
    """The envelope around the payload, its header from the message and the agreement."""
    out, exchange, document = _out(ctx), ctx.exchange, ctx.document
    assert ctx.agreement is not None and exchange is not None and document is not None
    header = Header(
        message_id=out.message_id,
        sender=ctx.rt.gateway_id,
        receiver=out.partner,
        agreement=ctx.agreement.id,
        message_type=out.message_type,
        created=datetime.now(UTC),
        payload_format=exchange.name,
        categories=tuple(sorted(exchange.categories(document))),
        correlation_id=out.correlation_id,
        reference=_reference(document),
    )
    ctx.unsigned = build_envelope(header, ctx.payload, exchange.media_type)


async def sign(ctx: Outbound) -> None:
    """Sign the envelope; its evidence form and digest are what the receipt must quote."""
    root = ctx.unsigned
    assert root is not None
    ctx.signed = ctx.rt.signer.sign(root)
    ctx.evidence, ctx.evidence_digest = canonical(root)
    ctx.digest = f"sha256:{ctx.evidence_digest}"


async def store(ctx: Outbound) -> None:
    """Keep the evidence, then the outbox entry: the commit point a retry finds."""
    rt, out = ctx.rt, _out(ctx)
    assert ctx.agreement is not None and ctx.signed is not None
    # what must exist for a sent envelope is written before the outbox entry
    await rt.audit.store_evidence(
        ctx.evidence_digest, "envelope", ctx.evidence, ctx.agreement.retention_days
    )
    if out.message_type == "maa.request":
        await rt.store.remember_request(ctx.agreement.id, rt.gateway_id, out.message_id)
    await rt.store.outbox_put(out.message_id, out.partner, ctx.signed, ctx.digest)


#: the steps that build the envelope: skipped when it was signed on an earlier attempt
BUILDING: tuple[Step, ...] = (decide, redact, encode, envelope, sign, store)


class OutboundPipeline:
    """Handles messages for partners; one instance per gateway."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.steps: tuple[Step, ...] = (read, agreement, *BUILDING, self.send)
        self._inflight: set[asyncio.Task[Any]] = set()
        self._batchers: dict[str, Batcher] = {}

    async def send(self, ctx: Outbound) -> None:
        """POST (alone or in the partner's batch), check the receipt entry, keep and audit it."""
        rt, out = ctx.rt, _out(ctx)
        assert ctx.signed is not None
        batcher = self.batcher(out.partner)
        if batcher is not None:
            verified = await batcher.send(ctx.signed)
        else:
            verified = await post_and_verify(rt, out.partner, [ctx.signed])
        entry = next((e for e in verified.receipt.entries if e.message_id == out.message_id), None)
        if entry is None:
            # a batch whose receipt list leaves an envelope out: the partner will take it later
            wait = verified.retry_after
            ctx.verdict = Retry(
                ErrorCode.DELIVERY_RETRY_LATER,
                f"{out.partner} left this message out of its receipt list (try again later"
                + (f", after {wait:g} s)" if wait else ")"),
                retry_after=wait,
            )
            return
        if entry.digest != ctx.digest:
            ctx.verdict = Retry(
                ErrorCode.DELIVERY_DIGEST_MISMATCH,
                f"the receipt's digest {entry.digest} is not the digest of what was sent",
            )
            return
        if verified.problem is not None:
            # an unverifiable refusal proves nothing either way: try again
            ctx.verdict = (
                Unverified(verified, entry)
                if entry.status in DELIVERED
                else Retry(
                    ErrorCode.DELIVERY_RECEIPT_UNVERIFIED,
                    f"the receipt ({entry.status}) does not verify: {verified.problem.reason}",
                )
            )
            return
        await rt.audit.store_evidence(
            verified.digest, "receipt", verified.evidence, ctx.retention_days
        )
        delivered = entry.status in DELIVERED
        await rt.record(_receipt_entry(ctx, verified, entry.status, entry.code, entry.reason))
        ctx.verdict = (
            Delivered(entry.status, entry.code, entry.reason)
            if delivered
            else Refused(
                entry.code or "REJECTED",
                entry.reason or "rejected by the partner",
                audited=True,
            )
        )

    def batcher(self, partner: str) -> Batcher | None:
        """The partner's batcher while its settings batch (they may change on reload)."""
        p = self.rt.settings.partners.get(partner)
        if p is None or p.batch_max <= 1:
            return None
        current = self._batchers.get(partner)
        if current is None or current.settings != (p.batch_max, p.batch_wait_ms / 1000):
            # a replaced batcher still sends what it gathered, on its own timer
            current = self._batchers[partner] = Batcher(
                self.post_and_verify, partner, p.batch_max, p.batch_wait_ms / 1000
            )
        return current

    async def post_and_verify(self, partner: str, envelopes: list[bytes]) -> VerifiedReceipt:
        """POST one envelope, or several as a batch; verify the signed receipt list once."""
        return await post_and_verify(self.rt, partner, envelopes)

    def handler(self, partner: str) -> Callable[[IncomingMessage], Awaitable[None]]:
        """The consumer callback for one partner's queue."""

        async def on_message(message: IncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                with structlog.contextvars.bound_contextvars(
                    partner=partner, message_id=message.message_id
                ):
                    await self.handle(partner, message)
            finally:
                if task is not None:
                    self._inflight.discard(task)
                if not message.processed:
                    await give_back(message, "the delivery ended unsettled")

        return on_message

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for in-flight deliveries; returns how many did not finish."""
        pending = [t for t in self._inflight if not t.done()]
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        return len(still)

    async def handle(self, partner: str, message: IncomingMessage) -> Outbound:
        """Run the steps over one message, then settle it; returns the finished context.

        Whatever fails, the message ends acked (handed on, retried later on a delay
        queue, or dead-lettered) or nacked back to its queue.
        """
        ctx = Outbound(self.rt, partner, message)
        try:
            await self.run(ctx)
            await settle(ctx)
        except Exception as exc:
            await settle_failure(ctx, exc)
        return ctx

    async def run(self, ctx: Outbound) -> None:
        """The steps in order, until one reaches a verdict."""
        for step in self.steps:
            if ctx.resent and step in BUILDING:
                continue
            try:
                await step(ctx)
            except REFUSALS as exc:
                ctx.verdict = Refused(exc.code, exc.reason)
            except DeliveryError as exc:
                ctx.verdict = Retry.of(exc)
            if ctx.verdict is not None:
                return
        raise AssertionError("the outbound steps ended without a verdict")  # pragma: no cover


async def _take_token(rt: Runtime, agreement: Any, partner: str) -> None:
    """Wait until the agreement's rate limit lets one more message go to ``partner``."""
    wait = rt.limiter.check(agreement, rt.gateway_id, partner, time.monotonic())
    while wait > 0:
        await asyncio.sleep(min(wait, 5.0))
        wait = rt.limiter.check(agreement, rt.gateway_id, partner, time.monotonic())


def _receipt_entry(
    ctx: Outbound, verified: VerifiedReceipt, status: str, code: str | None, reason: str | None
) -> AuditEvent:
    out = _out(ctx)
    return AuditEvent(
        event="delivered" if status in DELIVERED else "rejected",
        direction="outbound",
        partner=out.partner,
        agreement=ctx.agreement_id,
        message_type=out.message_type,
        message_id=out.message_id,
        correlation_id=out.correlation_id,
        envelope_digest=hexdigest(ctx.digest),
        receipt_digest=verified.digest,
        outcome=status,
        code=code,
        reason=reason,
        details={"attempt": out.attempt, "receipt_id": verified.receipt.receipt_id},
    )


def _out(ctx: Outbound) -> Outgoing:
    assert ctx.out is not None, "the read step comes first"
    return ctx.out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _reference(document: Document) -> str | None:
    value = document.body.get("reference")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None
