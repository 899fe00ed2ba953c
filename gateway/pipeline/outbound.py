"""Per-partner consumers: back-office message -> policy -> envelope -> partner -> ack.

For each message on ``maagw.outbound.<partner>``:

1. ``message_id`` is required (it is the message's identity end to end).
2. If an envelope was already signed for this id (a retry, maybe after a restart),
   its stored bytes are sent again unchanged. Otherwise the body is decoded with
   the adapter named by ``x-maagw-format``, the agreement policy is evaluated,
   redactions are applied, the payload is encoded in the agreement's exchange
   format, wrapped, signed and stored before the first attempt.
3. The envelope is POSTed over mutual TLS; the signed receipt is verified against
   the partner's pinned signing certificates and its digest must be the digest of
   what was sent.
4. The outcome is audited (durable), a status event is published with confirms,
   and only then is the AMQP message acknowledged.

A refusal (policy, translation, a rejection receipt) dead-letters the message
with its reason; a transient failure schedules a retry on a delay queue
(exponential backoff with jitter, capped) and acknowledges only once that copy is
confirmed. A message is retried until it reaches its age limit (the agreement's
``max_age_seconds``, else ``[delivery] max_age_seconds``); only then is it
dead-lettered with a ``failed`` event. A receipt that says "accepted" but cannot be
verified (the partner's CRL is stale, its signing certificate unknown) is kept as
evidence and reported as ``unverified_receipt``, never as a silent dead letter.

Every delivery ends settled: a state store or audit log that fails puts the message
on a short delay queue (the stores' health logs the episode once and turns readiness
false); the broker refusing a publish returns the message to its queue after a
pause; anything unexpected (a bug) is retried a few times, then dead-lettered with
``GATEWAY_INTERNAL``; and a message a callback left unsettled is returned to its
queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

import adapters
from adapters.base import Document
from gateway import tasks
from gateway.audit.chain import AuditEvent
from gateway.config.agreement import Agreement
from gateway.contract import REPLY_TYPES, AmqpHeader
from gateway.errors import (
    AdapterError,
    AuditError,
    AuthError,
    DeliveryError,
    EnvelopeError,
    GatewayError,
    PolicyViolation,
    RelayError,
    SignatureError,
    StoreError,
)
from gateway.pipeline.runtime import Runtime, canonical, hexdigest
from gateway.pipeline.settle import delay_for
from gateway.policy.engine import PolicyRequest, evaluate, find_agreement
from gateway.policy.redaction import apply_redactions
from gateway.relay.message import IncomingMessage
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import Header

log = structlog.get_logger(__name__)


#: how often an unexpected failure (a bug) has hit this message


#: unexpected failures of one message before it is dead-lettered (GATEWAY_INTERNAL)
MAX_INTERNAL_FAILURES = 5


#: the delay queue a message waits in while the state store or the audit log fails
STORE_RETRY_SECONDS = 5


#: how long a message waits for a failing store to come back before it is put aside
STORE_WAIT_SECONDS = 2.0


#: pause before a message the broker would not take is returned to its queue
REQUEUE_PAUSE_SECONDS = 1.0


#: receipt statuses that say the partner has the message
DELIVERED = frozenset({"accepted", "duplicate"})


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
        headers = message.headers or {}
        if not message.message_id:
            raise EnvelopeError("the AMQP message has no message_id", code="RELAY_NO_MESSAGE_ID")
        if not message.type:
            raise EnvelopeError(
                "the AMQP message has no type (message type)", code="RELAY_NO_MESSAGE_TYPE"
            )
        fmt = _header(headers, AmqpHeader.FORMAT)
        if not fmt:
            raise EnvelopeError(
                "the AMQP message has no x-maagw-format header", code="RELAY_NO_FORMAT"
            )
        return cls(
            partner=partner,
            message_id=str(message.message_id),
            message_type=str(message.type),
            correlation_id=str(message.correlation_id) if message.correlation_id else None,
            agreement=_header(headers, AmqpHeader.AGREEMENT),
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


class UnverifiedReceipt(Exception):
    """The partner says it has the message, but its receipt did not verify."""

    def __init__(self, verified: VerifiedReceipt, entry: envelope.ReceiptEntry) -> None:
        super().__init__(str(verified.problem))
        self.verified = verified
        self.entry = entry


class Batcher:
    """Gathers one partner's envelopes for at most ``wait`` seconds or ``size`` items.

    Each envelope keeps its own signature; the partner answers the batch with one
    signed receipt list, which is verified once and handed to every waiting message.
    """

    def __init__(self, pipeline: OutboundPipeline, partner: str, size: int, wait: float) -> None:
        self._pipeline = pipeline
        self._partner = partner
        self._size = size
        self._wait = wait
        self._pending: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def settings(self) -> tuple[int, float]:
        """(batch size, wait in seconds)."""
        return self._size, self._wait

    async def send(self, signed: bytes) -> VerifiedReceipt:
        """Add an envelope to the next batch and wait for that batch's receipt."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[VerifiedReceipt] = loop.create_future()
        self._pending.append((signed, future))
        if len(self._pending) >= self._size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            tasks.spawn(self._post(batch), name=f"batch-{self._partner}")

    async def _post(self, batch: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]]) -> None:
        try:
            verified = await self._pipeline.post_and_verify(
                self._partner, [signed for signed, _ in batch]
            )
        except Exception as exc:  # handed to every waiting message
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(verified)
        log.debug("batch_sent", partner=self._partner, size=len(batch))


class OutboundPipeline:
    """Handles messages for partners; one instance per gateway."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._inflight: set[asyncio.Task[Any]] = set()
        self._batchers: dict[str, Batcher] = {}

    def batcher(self, partner: str) -> Batcher | None:
        """The partner's batcher while its settings batch (they may change on reload)."""
        p = self.rt.settings.partners.get(partner)
        if p is None or p.batch_max <= 1:
            return None
        current = self._batchers.get(partner)
        if current is None or current.settings != (p.batch_max, p.batch_wait_ms / 1000):
            # a replaced batcher still sends what it gathered, on its own timer
            current = self._batchers[partner] = Batcher(
                self, partner, p.batch_max, p.batch_wait_ms / 1000
            )
        return current

    async def post_and_verify(self, partner: str, envelopes: list[bytes]) -> VerifiedReceipt:
        """POST one envelope, or several as a batch; verify the signed receipt list once."""
        rt = self.rt
        if len(envelopes) == 1:
            answer = await rt.client.post(partner, envelopes[0])
        else:
            answer = await rt.client.post_batch(partner, envelopes)
        try:
            root = xmlsafe.parse(answer.body)
        except GatewayError as exc:
            raise _bad_receipt(answer.status, partner, exc) from exc
        try:
            if answer.server_problem is not None:
                raise answer.server_problem
            verified = signing.verify(root, rt.trust.signing_certs(partner))
            receipt = envelope.parse_receipt(verified.root)
        except (SignatureError, AuthError) as exc:
            # not verifiable with what we trust (a stale CRL, an unknown or broken signature):
            # read it unverified, so that a partner who has the message is not sent it again
            # and again, and the message is not reported failed (see UnverifiedReceipt)
            try:
                unverified = envelope.parse_receipt(root)
            except GatewayError:
                raise _bad_receipt(answer.status, partner, exc) from exc
            evidence, digest = canonical(root)
            return VerifiedReceipt(unverified, evidence, digest, exc, answer.retry_after)
        except GatewayError as exc:
            raise _bad_receipt(answer.status, partner, exc) from exc
        return VerifiedReceipt(
            receipt, verified.evidence, hexdigest(verified.digest), None, answer.retry_after
        )

    def handler(self, partner: str) -> Any:
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
                    await _give_back(message, "the delivery ended unsettled")

        return on_message

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for in-flight deliveries; returns how many did not finish."""
        pending = [t for t in self._inflight if not t.done()]
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=timeout)
        return len(still)

    async def handle(self, partner: str, message: IncomingMessage) -> None:
        """Process one message; acknowledges only what is safely handed on.

        Whatever fails, the message ends acked (handed on, retried later on a delay
        queue, or dead-lettered) or nacked back to its queue.
        """
        try:
            await self._handle(partner, message)
        except (StoreError, AuditError) as exc:
            if not message.processed:
                await self._stores_unavailable(partner, message, exc)
        except RelayError as exc:
            if not message.processed:
                await self._requeue_later(message, exc)
        except Exception as exc:
            log.error("outbound_failed_unexpectedly", exc_info=exc)
            if not message.processed:
                await self._internal_failure(partner, message, exc)

    async def _handle(self, partner: str, message: IncomingMessage) -> None:
        try:
            out = Outgoing.read(partner, message)
        except EnvelopeError as exc:
            await self._dead(partner, message, None, exc.code, exc.reason, status="rejected")
            return
        if partner not in self.rt.settings.partners:
            # removed by a reload while its queue still held messages
            await self._dead(
                partner,
                message,
                out,
                "PARTNER_UNKNOWN",
                f"partner {partner} is no longer configured",
                status="failed",
            )
            return
        for health in (self.rt.store.health, self.rt.audit.health):
            if not await health.wait(STORE_WAIT_SECONDS):
                # known to fail right now: do not even try; the episode is logged already
                raise StoreError(f"{health.name}: {health.last_error}", code="STORE_UNAVAILABLE")
        try:
            signed, digest, agreement = await self._prepare(out, message.body)
        except (AdapterError, PolicyViolation, EnvelopeError, SignatureError) as exc:
            await self._dead(partner, message, out, exc.code, exc.reason, status="rejected")
            return
        try:
            receipt_status, code, reason = await self._deliver(out, signed, digest, agreement)
        except DeliveryError as exc:
            await self._retry_or_fail(message, out, agreement, exc)
            return
        except UnverifiedReceipt as unverified:
            await self._unverified(message, out, agreement, digest, unverified)
            return
        if receipt_status == "rejected":
            await self._dead(
                partner,
                message,
                out,
                code or "REJECTED",
                reason or "rejected by the partner",
                status="rejected",
                audited=True,
            )
            return
        try:
            await self.rt.relay.publish_event(
                partner,
                "delivered",
                self.rt.event(
                    "delivered",
                    message_id=out.message_id,
                    correlation_id=out.correlation_id,
                    partner=partner,
                    message_type=out.message_type,
                    agreement=_id(agreement),
                    code=code,
                    reason=reason,
                    attempt=out.attempt,
                    receipt=receipt_status,
                ),
            )
        except RelayError as exc:
            # delivered and audited; the retry will send the same bytes and get 'duplicate'
            await self._requeue_later(message, exc)
            return
        await message.ack()
        log.info("message_delivered", attempt=out.attempt, receipt=receipt_status)

    async def _unverified(
        self,
        message: IncomingMessage,
        out: Outgoing,
        agreement: Agreement | None,
        digest: str,
        unverified: UnverifiedReceipt,
    ) -> None:
        """The partner says it has the message, but its receipt does not verify.

        Not a failure and not a delivery: the receipt is kept as evidence, the outcome
        is ``unverified_receipt`` (audit entry, event, an error line for the operator),
        and the message is acknowledged: sending it again would only bring a duplicate
        receipt signed the same way. The operator fixes the trust material (a fresh CRL,
        the partner's new signing certificate); the evidence can then be checked again.
        """
        rt = self.rt
        verified, entry = unverified.verified, unverified.entry
        problem = verified.problem
        assert problem is not None
        await rt.audit.store_evidence(
            verified.digest,
            "receipt",
            verified.evidence,
            agreement.retention_days if agreement else 3650,
        )
        await rt.record(
            AuditEvent(
                event="receipt",
                direction="outbound",
                partner=out.partner,
                agreement=_id(agreement),
                message_type=out.message_type,
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                envelope_digest=hexdigest(digest),
                receipt_digest=verified.digest,
                outcome="unverified_receipt",
                code=problem.code,
                reason=f"the partner answered {entry.status}, but its receipt does not "
                f"verify: {problem.reason}",
                details={
                    "attempt": out.attempt,
                    "receipt_id": verified.receipt.receipt_id,
                    "receipt_status": entry.status,
                },
            )
        )
        await rt.relay.publish_event(
            out.partner,
            "unverified_receipt",
            rt.event(
                "unverified_receipt",
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                partner=out.partner,
                message_type=out.message_type,
                agreement=_id(agreement),
                code=problem.code,
                reason=problem.reason,
                attempt=out.attempt,
                receipt=entry.status,
            ),
        )
        await message.ack()
        log.error(
            "receipt_unverified",
            code=problem.code,
            reason=problem.reason,
            receipt=entry.status,
            receipt_digest=verified.digest,
            hint="check the partner's CRL and signing certificates; the receipt is kept "
            "as evidence",
        )

    async def _prepare(self, out: Outgoing, body: bytes) -> tuple[bytes, str, Agreement | None]:
        """The signed envelope for ``out``: the stored one on a retry, else built now."""
        rt = self.rt
        agreement = find_agreement(
            rt.settings.agreements, out.agreement, rt.gateway_id, out.partner, out.message_type
        )
        if agreement is not None:
            structlog.contextvars.bind_contextvars(agreement=agreement.id)
        stored = await rt.store.outbox_get(out.message_id)
        if stored is not None:
            return stored[0], stored[1], agreement
        source = adapters.get(out.format)
        document = source.decode(body, message_type=out.message_type)
        decision = await self._decide(
            out, agreement, source.categories(document), document, len(body)
        )
        await rt.record(
            self._audit(
                out,
                agreement,
                "policy_decision",
                "allow",
                decision.code,
                decision.reason,
                rule=decision.rule,
            )
        )
        assert agreement is not None  # an allow names its agreement
        redacted = (
            Document(
                document.message_type,
                apply_redactions(document.body, decision.redactions),
                document.attachments,
            )
            if decision.redactions
            else document  # nothing to remove: no copy of the body
        )
        exchange = adapters.get(agreement.exchange_format)
        payload = exchange.encode(redacted)
        header = Header(
            message_id=out.message_id,
            sender=rt.gateway_id,
            receiver=out.partner,
            agreement=agreement.id,
            message_type=out.message_type,
            created=datetime.now(UTC),
            payload_format=exchange.name,
            categories=tuple(sorted(exchange.categories(redacted))),
            correlation_id=out.correlation_id,
            reference=_reference(redacted),
        )
        root = envelope.build_envelope(header, payload, exchange.media_type)
        signed = rt.signer.sign(root)
        evidence, evidence_digest = canonical(root)
        digest = f"sha256:{evidence_digest}"
        # the outbox entry is the commit point (a retry finds it and sends these bytes):
        # what must exist for a sent envelope is written before it
        await rt.audit.store_evidence(
            evidence_digest, "envelope", evidence, agreement.retention_days
        )
        if out.message_type == "maa.request":
            await rt.store.remember_request(agreement.id, rt.gateway_id, out.message_id)
        await rt.store.outbox_put(out.message_id, out.partner, signed, digest)
        return signed, digest, agreement

    async def _decide(
        self,
        out: Outgoing,
        agreement: Agreement | None,
        categories: frozenset[str],
        document: Document,
        size: int,
    ) -> Any:
        rt = self.rt
        answers = None
        if out.message_type in REPLY_TYPES and agreement is not None:
            answers = bool(out.correlation_id) and await rt.store.knows_request(
                agreement.id, out.partner, out.correlation_id or ""
            )
        decision = evaluate(
            agreement,
            PolicyRequest(
                direction="outbound",
                sender=rt.gateway_id,
                receiver=out.partner,
                message_type=out.message_type,
                categories=categories,
                declared_categories=None,
                size=size,
                payload_format=out.format,
                at=datetime.now(UTC),
                purpose=_str(document.body.get("purpose")),
                legal_basis=_str(document.body.get("legalBasis")),
                answers_known_request=answers,
            ),
        )
        if not decision.allowed:
            await rt.record(
                self._audit(
                    out,
                    agreement,
                    "policy_decision",
                    "deny",
                    decision.code,
                    decision.reason,
                    rule=decision.rule,
                )
            )
            raise PolicyViolation(decision.reason, code=decision.code)
        # outbound rate limits are back-pressure: wait for a token, never refuse; only
        # allowed messages take one
        if agreement is not None:
            await self._take_token(agreement, out.partner)
        return decision

    async def _take_token(self, agreement: Agreement, partner: str) -> None:
        """Wait until the agreement's rate limit lets one more message go to ``partner``."""
        rt = self.rt
        wait = rt.limiter.check(agreement, rt.gateway_id, partner, time.monotonic())
        while wait > 0:
            await asyncio.sleep(min(wait, 5.0))
            wait = rt.limiter.check(agreement, rt.gateway_id, partner, time.monotonic())

    async def _deliver(
        self, out: Outgoing, signed: bytes, digest: str, agreement: Agreement | None
    ) -> tuple[str, str | None, str | None]:
        """POST and verify the receipt; returns (status, code, reason) from its entry."""
        rt = self.rt
        batcher = self.batcher(out.partner)
        if batcher is not None:
            verified = await batcher.send(signed)
        else:
            verified = await self.post_and_verify(out.partner, [signed])
        receipt = verified.receipt
        entry = next((e for e in receipt.entries if e.message_id == out.message_id), None)
        if entry is None:
            # a batch whose receipt list leaves an envelope out: the partner will take it later
            wait = verified.retry_after
            raise DeliveryError(
                f"{out.partner} left this message out of its receipt list (try again later"
                + (f", after {wait:g} s)" if wait else ")"),
                code="DELIVERY_RETRY_LATER",
                retry_after=wait,
            )
        if entry.digest != digest:
            raise DeliveryError(
                f"the receipt's digest {entry.digest} is not the digest of what was sent",
                code="DELIVERY_DIGEST_MISMATCH",
            )
        if verified.problem is not None:
            if entry.status in DELIVERED:
                raise UnverifiedReceipt(verified, entry)
            # an unverifiable refusal proves nothing either way: try again
            raise DeliveryError(
                f"the receipt ({entry.status}) does not verify: {verified.problem.reason}",
                code="DELIVERY_RECEIPT_UNVERIFIED",
            )
        receipt_digest = verified.digest
        await rt.audit.store_evidence(
            receipt_digest,
            "receipt",
            verified.evidence,
            agreement.retention_days if agreement else 3650,
        )
        event = "delivered" if entry.status in ("accepted", "duplicate") else "rejected"
        await rt.record(
            AuditEvent(
                event=event,
                direction="outbound",
                partner=out.partner,
                agreement=_id(agreement),
                message_type=out.message_type,
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                envelope_digest=hexdigest(digest),
                receipt_digest=receipt_digest,
                outcome=entry.status,
                code=entry.code,
                reason=entry.reason,
                details={"attempt": out.attempt, "receipt_id": receipt.receipt_id},
            )
        )
        return entry.status, entry.code, entry.reason

    async def _retry_or_fail(
        self,
        message: IncomingMessage,
        out: Outgoing,
        agreement: Agreement | None,
        exc: DeliveryError,
    ) -> None:
        """Retry later on a delay queue, or dead-letter at the age limit or a permanent error."""
        rt = self.rt
        max_age = _max_age(agreement, rt.settings.delivery.max_age_seconds)
        age = time.time() - out.first_seen
        if age > max_age or not exc.retryable:
            why = (
                f"given up after {out.attempt} attempts over {age:.0f} s, the age limit is "
                f"{max_age:g} s"
                if exc.retryable
                else "not retryable"
            )
            await self._dead(
                out.partner, message, out, exc.code, f"{exc.reason} ({why})", status="failed"
            )
            return
        s = rt.settings.delivery
        delay = delay_for(out.attempt, s.backoff_initial, s.backoff_max, at_least=exc.retry_after)
        await rt.record(
            self._audit(
                out,
                agreement,
                "retry",
                "retrying",
                exc.code,
                exc.reason,
                attempt=str(out.attempt),
                delay=str(delay),
            )
        )
        await self._to_delay_queue(
            message,
            out.partner,
            delay,
            attempt=out.attempt + 1,
            last_error=exc,
            extra={AmqpHeader.FIRST_SEEN: str(out.first_seen)},
        )
        await rt.relay.publish_event(
            out.partner,
            "retrying",
            rt.event(
                "retrying",
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                partner=out.partner,
                code=exc.code,
                reason=exc.reason,
                attempt=out.attempt,
                next_attempt_in=delay,
            ),
        )
        await message.ack()
        # the first retry is routine; later ones mean the partner keeps failing
        (log.info if out.attempt <= 1 else log.warning)(
            "delivery_retrying",
            attempt=out.attempt,
            delay=delay,
            code=exc.code,
            reason=exc.reason,
            age_seconds=round(age),
        )

    async def _to_delay_queue(
        self,
        message: IncomingMessage,
        partner: str,
        delay: int,
        *,
        attempt: int | None = None,
        last_error: GatewayError | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A confirmed copy of ``message`` in the delay queue that returns it in ``delay`` s."""
        rt = self.rt
        headers = dict(message.headers or {})
        headers.setdefault(AmqpHeader.FIRST_SEEN, str(time.time()))
        if attempt is not None:
            headers[AmqpHeader.ATTEMPT] = attempt
        if last_error is not None:
            headers[AmqpHeader.LAST_ERROR] = f"{last_error.code}: {last_error.reason}"[:512]
        headers.update(extra or {})
        await rt.relay.publish(
            rt.relay.names.retry,
            f"{delay}s.{partner}",
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            headers=headers,
        )

    async def _stores_unavailable(
        self, partner: str, message: IncomingMessage, exc: GatewayError
    ) -> None:
        """The state store or the audit log failed: put the message aside for a few seconds.

        Not an attempt (the partner was maybe never asked): the attempt count stays, the age
        limit still counts. The stores log the episode once and readiness is false meanwhile;
        each message is only a debug line. If the broker will not take the copy either, the
        message goes back to its queue after a pause.
        """
        log.debug("delivery_deferred", code=exc.code, reason=exc.reason)
        try:
            await self._to_delay_queue(message, partner, STORE_RETRY_SECONDS)
        except RelayError as relay_exc:
            await self._requeue_later(message, relay_exc)
            return
        await message.ack()

    async def _internal_failure(
        self, partner: str, message: IncomingMessage, exc: Exception
    ) -> None:
        """Something unexpected (a bug) failed: retry a few times, then dead-letter."""
        failures = _int(_header(message.headers or {}, AmqpHeader.INTERNAL_FAILURES)) + 1
        reason = f"{exc.__class__.__name__}: {exc}"[:512]
        try:
            if failures >= MAX_INTERNAL_FAILURES:
                await self._dead(
                    partner,
                    message,
                    None,
                    "GATEWAY_INTERNAL",
                    f"failed {failures} times unexpectedly, last: {reason}",
                    status="failed",
                )
                return
            await self._to_delay_queue(
                message,
                partner,
                delay_for(failures, 1.0, 10.0),
                extra={AmqpHeader.INTERNAL_FAILURES: str(failures)},
            )
            await message.ack()
        except Exception as second:  # the stores or the broker as well: give it back
            log.warning("internal_failure_not_settled", error=str(second))
            await _give_back(message, reason)

    async def _dead(
        self,
        partner: str,
        message: IncomingMessage,
        out: Outgoing | None,
        code: str,
        reason: str,
        *,
        status: str,
        audited: bool = False,
    ) -> None:
        """Dead-letter with a reason, keep a copy, tell the back office, then ack."""
        rt = self.rt
        properties = {
            "message_id": message.message_id,
            "type": message.type,
            "correlation_id": message.correlation_id,
            "content_type": message.content_type,
            "headers": {k: str(v) for k, v in (message.headers or {}).items()},
        }
        dead_id = await rt.store.dead_put(
            message_id=message.message_id,
            partner=partner,
            direction="outbound",
            code=code,
            reason=reason,
            properties=properties,
            body=message.body,
        )
        events = (
            []
            if audited
            else [
                self._audit_raw(
                    partner,
                    message,
                    out,
                    "rejected" if status == "rejected" else "failed",
                    code,
                    reason,
                )
            ]
        )
        events.append(
            self._audit_raw(
                partner, message, out, "dead_lettered", code, reason, dead_id=str(dead_id)
            )
        )
        await rt.record(*events)
        headers = dict(message.headers or {})
        headers.update(
            {
                AmqpHeader.CODE: code,
                AmqpHeader.REASON: reason[:1024],
                AmqpHeader.PARTNER: partner,
                AmqpHeader.DEAD_ID: dead_id,
            }
        )
        await rt.relay.publish(
            rt.relay.names.dlx,
            partner,
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            headers=headers,
        )
        await rt.relay.publish_event(
            partner,
            status,
            rt.event(
                status,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                partner=partner,
                code=code,
                reason=reason,
                attempt=out.attempt if out else 1,
            ),
        )
        await message.ack()
        log.warning("message_dead_lettered", code=code, reason=reason, status=status)

    async def _requeue_later(self, message: IncomingMessage, exc: RelayError) -> None:
        """The broker could not take a publish: give the message back after a pause.

        If the channel is gone the broker has already requeued it; otherwise a
        ``nack(requeue=True)`` returns it, and the queue's delivery limit bounds
        how often this can happen to one message.
        """
        log.warning("relay_publish_failed", code=exc.code, reason=exc.reason)
        await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
        await _give_back(message, exc.reason, pause=0)

    def _audit(
        self,
        out: Outgoing,
        agreement: Agreement | None,
        event: str,
        outcome: str,
        code: str | None,
        reason: str | None,
        **details: str,
    ) -> AuditEvent:
        return AuditEvent(
            event=event,
            direction="outbound",
            partner=out.partner,
            agreement=_id(agreement),
            message_type=out.message_type,
            message_id=out.message_id,
            correlation_id=out.correlation_id,
            outcome=outcome,
            code=code,
            reason=reason,
            details=details,
        )

    def _audit_raw(
        self,
        partner: str,
        message: IncomingMessage,
        out: Outgoing | None,
        event: str,
        code: str,
        reason: str,
        **details: str,
    ) -> AuditEvent:
        return AuditEvent(
            event=event,
            direction="outbound",
            partner=partner,
            agreement=out.agreement if out else None,
            message_type=message.type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            outcome="refused" if event != "dead_lettered" else "dead",
            code=code,
            reason=reason,
            details=details,
        )


async def _give_back(
    message: IncomingMessage, reason: str, *, pause: float = REQUEUE_PAUSE_SECONDS
) -> None:
    """Return a message to its queue (after a pause, so that a fault does not spin).

    If the channel is gone the broker has already requeued it. The queue's delivery
    limit bounds how often this can happen to one message.
    """
    if message.processed:
        return
    log.warning("delivery_returned_to_queue", reason=reason)
    if pause:
        await asyncio.sleep(pause)
    try:
        await message.nack(requeue=True)
    except Exception:
        log.info("nack_skipped_channel_closed")


def _bad_receipt(status: int, partner: str, exc: GatewayError) -> DeliveryError:
    return DeliveryError(
        f"answer {status} from {partner} is not a valid signed receipt: {exc.code}: {exc.reason}",
        code="DELIVERY_BAD_RECEIPT",
    )


def _max_age(agreement: Agreement | None, default: float) -> float:
    """The message's age limit: the agreement's, else the gateway's default."""
    if agreement is not None and agreement.delivery.max_age_seconds is not None:
        return agreement.delivery.max_age_seconds
    return default


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if value else None


def _id(agreement: Agreement | None) -> str | None:
    return agreement.id if agreement else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _reference(document: Document) -> str | None:
    value = document.body.get("reference")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None
