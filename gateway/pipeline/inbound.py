"""Inbound: a signed envelope from an authenticated partner → the back office, and a signed receipt.

The steps, in order (``InboundPipeline.steps``), each a function over one ``Inbound``
context; any refusal ends them with a rejection entry in the receipt and an audit entry,
and nothing is published:

1. ``admit``: the partner's refusal allowance has room (else 429, before any work).
2. ``parse``: safe parse (size, depth, no DTD/entities) — ``SIZE_LIMIT``, ``XML_UNSAFE``.
3. ``verify``: signature against the partner's pinned signing certificates — ``SIG_*``;
   envelope schema and header — ``SCHEMA_INVALID``; sender = TLS identity —
   ``AUTH_SENDER_MISMATCH``; freshness — ``SIG_STALE``.
4. ``claim``: the (sender, message id) claim: a duplicate gets the original receipt id,
   an id in flight elsewhere a 503.
5. ``decide``: payload decode (exchange adapter) and agreement policy — ``POLICY_*``,
   ``TRANSLATE_*``; the decision is audited.
6. ``translate``: into the back office's format, written anew from what the policy saw.
7. ``publish``: with confirms; the request is remembered, the evidence kept.

Then ``receipt`` (``InboundPipeline.answer``) signs one receipt list for the request's
envelopes, keeps it, writes their audit entries and only then answers. If the broker
cannot confirm, the answer is 503 with Retry-After and the claim is released: the
sender keeps the message and tries again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

import adapters
from gateway.audit.chain import AuditEvent
from gateway.contract import REPLY_TYPES, AmqpHeader
from gateway.errors import (
    AdapterError,
    AuthError,
    EnvelopeError,
    ErrorCode,
    GatewayError,
    PolicyViolation,
    RelayError,
    SignatureError,
    http_status,
)
from gateway.pipeline import receipts
from gateway.pipeline.context import EMPTY_DIGEST, Inbound, Reply
from gateway.pipeline.runtime import Runtime, hexdigest
from gateway.policy.engine import PolicyRequest, evaluate, find_agreement
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import (
    ReceiptEntry,
    peek_created,
    peek_message_id,
)

log = structlog.get_logger(__name__)


#: seconds between two audit entries of one partner's refusal allowance being used up
AUDIT_OVER_ALLOWANCE_EVERY = 60.0


#: what a step may raise to refuse the envelope (a rejection entry in the receipt)
REFUSALS = (EnvelopeError, SignatureError, AuthError, PolicyViolation, AdapterError)


Step = Callable[[Inbound], Awaitable[None]]


async def parse(ctx: Inbound) -> None:
    """Safe parse within the limits; the evidence form and its digest, computed once."""
    limits = ctx.rt.settings.partner_api
    root = ctx.root = xmlsafe.parse(
        ctx.body, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth
    )
    # the receipt quotes the evidence's digest and the audit log stores it
    ctx.evidence = signing.document_c14n(root)
    ctx.digest = "sha256:" + hashlib.sha256(ctx.evidence).hexdigest()
    ctx.message_id = peek_message_id(root) or "-"


async def verify(ctx: Inbound) -> None:
    """The signature, the envelope's schema and header: sender, receiver, freshness."""
    rt, root = ctx.rt, ctx.root
    assert root is not None
    # the signing certificate must be valid at the signing time (the envelope's Created,
    # once it lies in the replay window; else now)
    ctx.verified = signing.verify(
        root, rt.trust.signing_certs(ctx.partner), at=peek_created(root), evidence=ctx.evidence
    )
    ctx.env = envelope.parse_envelope(ctx.verified.root)
    head = ctx.head
    ctx.message_id = head.message_id
    structlog.contextvars.bind_contextvars(message_id=head.message_id, agreement=head.agreement)
    envelope.check_header(head, sender=ctx.partner, receiver=rt.gateway_id)


async def claim(ctx: Inbound) -> None:
    """Claim (sender, message id): new, a duplicate (the original receipt), or in flight."""
    head = ctx.head
    found = await ctx.rt.store.claim(ctx.partner, head.message_id, ctx.digest, stale_after=60.0)
    if found.outcome != "claimed" and found.digest != ctx.digest:
        raise EnvelopeError(
            f"message id {head.message_id} was already used for a different envelope "
            f"({found.digest})",
            code=ErrorCode.ENVELOPE_ID_REUSED,
        )
    if found.outcome == "published":
        ctx.audit("duplicate", "ok", ErrorCode.DUPLICATE, "already received and published")
        ctx.answer(
            200,
            ReceiptEntry(
                head.message_id,
                ctx.digest,
                "duplicate",
                code=ErrorCode.DUPLICATE,
                reason=envelope.DUPLICATE_REASON,
                original_receipt=found.receipt_id,
            ),
        )
        log.info("message_duplicate", partner=ctx.partner)
    elif found.outcome == "in_flight":
        # another request (or a process that died, until its claim is taken over) is
        # publishing this id right now
        log.warning(
            "claim_in_flight",
            partner=ctx.partner,
            hint="answered 503; the sender tries again later",
        )
        ctx.later()
    else:
        ctx.claimed, ctx.possible_duplicate = True, found.possible_duplicate


async def decide(ctx: Inbound) -> None:
    """Decode the payload and evaluate the agreement policy; the decision is audited."""
    rt, head = ctx.rt, ctx.head
    assert ctx.env is not None
    ctx.agreement = find_agreement(
        rt.settings.agreements, head.agreement, head.sender, head.receiver, head.message_type
    )
    exchange = adapters.get(head.payload_format)
    document = exchange.decode(ctx.env.payload, message_type=head.message_type)
    answers = None
    if head.message_type in REPLY_TYPES:
        answers = bool(head.correlation_id) and await rt.store.knows_request(
            head.agreement, rt.gateway_id, head.correlation_id or ""
        )
    request = PolicyRequest(
        direction="inbound",
        sender=head.sender,
        receiver=head.receiver,
        message_type=head.message_type,
        categories=exchange.categories(document),
        declared_categories=frozenset(head.categories),
        size=len(ctx.env.payload),
        payload_format=head.payload_format,
        at=datetime.now(UTC),
        purpose=_str(document.body.get("purpose")),
        legal_basis=_str(document.body.get("legalBasis")),
        answers_known_request=answers,
    )
    decision = evaluate(ctx.agreement, request)
    if decision.allowed and ctx.agreement is not None:
        # only a message the agreement allows takes a token: refusals cost no allowance
        wait = rt.limiter.check(ctx.agreement, ctx.partner, rt.gateway_id, time.monotonic())
        if wait > 0:
            decision = evaluate(
                ctx.agreement, dataclasses.replace(request, rate_ok=False, retry_after=wait)
            )
    ctx.audit(
        "policy_decision",
        "allow" if decision.allowed else "deny",
        decision.code,
        decision.reason,
        rule=decision.rule,
    )
    if decision.allowed:
        ctx.document = document
        return
    await rt.record(*ctx.entries)  # a refusal is audited now, whatever the answer
    ctx.entries.clear()
    if decision.code == ErrorCode.POLICY_RATE:
        await rt.store.release(ctx.partner, head.message_id)
        ctx.claimed = False
        ctx.later(429, max(1.0, decision.retry_after or 1.0))
        return
    raise PolicyViolation(decision.reason, code=decision.code)


async def translate(ctx: Inbound) -> None:
    """The back office's format, written anew from what the policy saw.

    Also into the exchange format: the partner's own bytes could be read differently by
    the back office (a comment inside a text, duplicate JSON keys, another encoding).
    """
    assert ctx.document is not None
    ctx.target = adapters.get(ctx.rt.settings.back_office.inbound_format)
    ctx.translated = ctx.target.encode(ctx.document)


async def publish(ctx: Inbound) -> None:
    """Publish with confirms; then remember the request and keep the envelope's evidence."""
    rt, head, target, verified = ctx.rt, ctx.head, ctx.target, ctx.verified
    assert target is not None and verified is not None
    try:
        await rt.relay.publish(
            rt.relay.names.inbound,
            f"{ctx.partner}.{head.message_type}",
            ctx.translated,
            message_id=head.message_id,
            message_type=head.message_type,
            correlation_id=head.correlation_id,
            content_type=target.media_type,
            headers={
                AmqpHeader.AGREEMENT: head.agreement,
                AmqpHeader.FORMAT: target.name,
                AmqpHeader.SENDER: ctx.partner,
                AmqpHeader.ENVELOPE_DIGEST: ctx.digest,
                # an earlier publish of this id may have reached the broker unconfirmed
                **({AmqpHeader.POSSIBLE_DUPLICATE: "true"} if ctx.possible_duplicate else {}),
            },
        )
    except RelayError as exc:
        log.warning("relay_unavailable", code=exc.code, reason=exc.reason)
        ctx.claimed = False
        await rt.store.release(
            ctx.partner, head.message_id, uncertain=exc.code == ErrorCode.RELAY_UNCONFIRMED
        )
        ctx.later()
        return
    try:
        if head.message_type == "maa.request":
            await rt.store.remember_request(head.agreement, ctx.partner, head.message_id)
        retention = ctx.agreement.retention_days if ctx.agreement else 3650
        await rt.audit.store_evidence(
            hexdigest(verified.digest), "envelope", verified.evidence, retention
        )
    except BaseException:
        # published already: the sender's retry must be published marked as a possible
        # duplicate
        ctx.claimed = False
        with contextlib.suppress(GatewayError):
            await rt.store.release(ctx.partner, head.message_id, uncertain=True)
        raise
    ctx.audit("published", "ok", None, None, format=target.name)
    ctx.published = True
    ctx.answer(200, ReceiptEntry(head.message_id, ctx.digest, "accepted"))
    log.info("message_published", partner=ctx.partner, type=head.message_type)


class InboundPipeline:
    """Runs the inbound steps for each envelope from an authenticated partner."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.steps: tuple[Step, ...] = (
            self.admit,
            parse,
            verify,
            claim,
            decide,
            translate,
            publish,
        )
        #: partner -> when its refusal allowance was last found used up (and audited)
        self._over_allowance: dict[str, float] = {}

    async def receive(self, partner: str, body: bytes) -> Inbound:
        """Run the steps over one envelope; never raises for bad input."""
        ctx = Inbound(self.rt, partner, body)
        try:
            for step in self.steps:
                await step(ctx)
                if ctx.status is not None:
                    break
        except REFUSALS as exc:
            await self._release(ctx)
            self.refuse(ctx, exc)
        except GatewayError as exc:
            await self._release(ctx)
            # the gateway's own state (store, audit, broker) failed: the sender retries. A
            # store failure is logged once per episode by the store's health (error level)
            (log.warning if isinstance(exc, RelayError) else log.debug)(
                "inbound_unavailable", code=exc.code, reason=exc.reason
            )
            ctx.later()
        except BaseException:
            await self._release(ctx)
            raise
        return ctx

    async def admit(self, ctx: Inbound) -> None:
        """A 429 while the partner has used up its allowance of refused messages.

        Checked before an envelope costs any work (see ``over_allowance``).
        """
        self._admit(ctx)

    def over_allowance(self, partner: str) -> Inbound | None:
        """The ``admit`` step alone, before a request's body is read: the 429, or None."""
        ctx = Inbound(self.rt, partner, b"", digest=EMPTY_DIGEST)
        self._admit(ctx)
        return ctx if ctx.status is not None else None

    def _admit(self, ctx: Inbound) -> None:
        """A 429 is logged (warning) and audited (``POLICY_RATE_REFUSALS``) at most once a
        minute per partner, the others only logged at debug: a partner spraying junk cannot
        flood the audit log either."""
        rt, partner = self.rt, ctx.partner
        now = time.monotonic()
        wait = rt.limiter.refusal_wait(rt.settings.agreements, partner, rt.gateway_id, now)
        if wait <= 0:
            return
        last = self._over_allowance.get(partner)
        if last is not None and now - last < AUDIT_OVER_ALLOWANCE_EVERY:
            log.debug("refused_over_allowance", partner=partner, retry_after=wait)
        else:
            self._over_allowance[partner] = now
            log.warning("refusal_allowance_used_up", partner=partner, retry_after=wait)
            ctx.entries.append(
                AuditEvent(
                    event="policy_decision",
                    direction="inbound",
                    partner=partner,
                    outcome="deny",
                    code=ErrorCode.POLICY_RATE_REFUSALS,
                    reason=f"{partner} made this gateway refuse as many messages as its "
                    "agreements let it send; its requests are answered 429 until the "
                    "allowance refills",
                )
            )
        ctx.later(429, max(1.0, wait))

    def refuse(self, ctx: Inbound, exc: GatewayError) -> Inbound:
        """Refuse the envelope: a rejection entry in the receipt, an audit entry, a log line."""
        head = ctx.env.header if ctx.env else None
        ctx.entries.append(
            AuditEvent(
                event="rejected",
                direction="inbound",
                partner=ctx.partner,
                agreement=head.agreement if head else None,
                message_type=head.message_type if head else None,
                message_id=ctx.message_id if ctx.message_id != "-" else None,
                correlation_id=head.correlation_id if head else None,
                envelope_digest=hexdigest(ctx.digest),
                outcome="refused",
                code=exc.code,
                reason=exc.reason,
            )
        )
        log.warning("message_rejected", partner=ctx.partner, code=exc.code, reason=exc.reason)
        # a refusal costs the partner's refusal allowance (RateLimiter.refused)
        self.rt.limiter.refused(
            self.rt.settings.agreements, ctx.partner, self.rt.gateway_id, time.monotonic()
        )
        ctx.answer(
            http_status(exc.code),
            ReceiptEntry(ctx.message_id, ctx.digest, "rejected", code=exc.code, reason=exc.reason),
        )
        return ctx

    def refuse_request(self, partner: str, exc: GatewayError) -> Inbound:
        """Refuse a whole request before any envelope was read (its form, its size)."""
        return self.refuse(Inbound(self.rt, partner, b"", digest=EMPTY_DIGEST), exc)

    async def _release(self, ctx: Inbound) -> None:
        """Give up the claim the steps took (the sender will send the envelope again)."""
        if ctx.claimed:
            ctx.claimed = False
            try:
                await self.rt.store.release(ctx.partner, ctx.message_id)
            except GatewayError as exc:  # the store fails: its health has logged it
                log.debug("claim_not_released", code=exc.code, reason=exc.reason)

    async def answer(self, partner: str, done: list[Inbound], *, batch: bool = False) -> Reply:
        """The ``receipt`` step: one signed receipt list for a request's envelopes."""
        return await receipts.answer(self.rt, partner, done, batch=batch)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
