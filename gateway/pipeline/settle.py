"""Settle: the one place where an outbound delivery ends — acked, retried later or dead-lettered.

A verdict from the steps is carried out here (``settle``), and so is every failure the
steps could not turn into one (``settle_failure``):

- ``Delivered``: the ``delivered`` event is published with its confirm, then the ack.
- ``Refused``: a copy is kept in the state store, the refusal is audited, the message is
  published to the dead-letter exchange with its code and reason, the back office is told,
  then the ack.
- ``Retry``: a confirmed copy waits on a delay queue (exponential backoff with jitter,
  honouring the partner's Retry-After) until the message's age limit; past it, or for a
  permanent failure, it is dead-lettered with a ``failed`` event.
- ``Unverified``: the partner says it has the message but its receipt does not verify:
  kept as evidence, reported as ``unverified_receipt``, acked.
- A state store or audit log that fails puts the message on a short delay queue; the broker
  refusing a publish returns it to its queue after a pause; anything unexpected (a bug) is
  retried a few times, then dead-lettered with ``GATEWAY_INTERNAL``.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import structlog

from gateway.audit.chain import AuditEvent
from gateway.config.agreement import Agreement
from gateway.contract import AmqpHeader
from gateway.errors import AuditError, ErrorCode, GatewayError, RelayError, StoreError
from gateway.pipeline.context import (
    Delivered,
    Outbound,
    Refused,
    Retry,
    Unverified,
    header,
)
from gateway.pipeline.runtime import hexdigest
from gateway.relay.message import IncomingMessage
from gateway.relay.topology import DELAYS

log = structlog.get_logger(__name__)


#: unexpected failures of one message before it is dead-lettered (GATEWAY_INTERNAL)
MAX_INTERNAL_FAILURES = 5


#: the delay queue a message waits in while the state store or the audit log fails (one of
#: the ladder's ``DELAYS``: a publish to a queue that does not exist is returned unroutable)
STORE_RETRY_SECONDS = 4


#: pause before a message the broker would not take is returned to its queue
REQUEUE_PAUSE_SECONDS = 1.0


#: how long a nack may take before the broker is left to requeue the message by itself
NACK_TIMEOUT_SECONDS = 5.0


#: jitter only: not a secret
_rng = random.Random()  # noqa: S311


async def settle(ctx: Outbound) -> None:
    """Carry out the verdict the steps reached."""
    verdict = ctx.verdict
    if isinstance(verdict, Delivered):
        await _delivered(ctx, verdict)
    elif isinstance(verdict, Refused):
        await dead_letter(ctx, verdict)
    elif isinstance(verdict, Retry):
        await _retry_or_fail(ctx, verdict)
    elif isinstance(verdict, Unverified):
        await _unverified(ctx, verdict)
    else:  # pragma: no cover - every step path ends in a verdict
        raise AssertionError(f"no verdict for {ctx.message.message_id}")


async def settle_failure(ctx: Outbound, exc: Exception) -> None:
    """A step or the settling itself failed: the delivery still ends settled.

    The stores failing is retryable (a short delay queue, readiness is false meanwhile);
    the broker refusing a publish returns the message to its queue after a pause; anything
    else is a bug: retried a few times, then dead-lettered.
    """
    if ctx.message.processed:
        return
    if isinstance(exc, StoreError | AuditError):
        await _put_aside(ctx, exc)
    elif isinstance(exc, RelayError):
        await requeue_later(ctx.message, exc)
    else:
        log.error("outbound_failed_unexpectedly", exc_info=exc)
        await _internal_failure(ctx, exc)


async def _delivered(ctx: Outbound, verdict: Delivered) -> None:
    rt, out = ctx.rt, ctx.out
    assert out is not None
    try:
        await rt.relay.publish_event(
            ctx.partner,
            "delivered",
            rt.event(
                "delivered",
                message_id=out.message_id,
                correlation_id=out.correlation_id,
                partner=ctx.partner,
                message_type=out.message_type,
                agreement=ctx.agreement_id,
                code=verdict.code,
                reason=verdict.reason,
                attempt=out.attempt,
                receipt=verdict.status,
            ),
        )
    except RelayError as exc:
        # delivered and audited; the retry will send the same bytes and get 'duplicate'
        await requeue_later(ctx.message, exc)
        return
    await ctx.message.ack()
    log.info("message_delivered", attempt=out.attempt, receipt=verdict.status)


async def dead_letter(ctx: Outbound, verdict: Refused) -> None:
    """Dead-letter with a reason, keep a copy, tell the back office, then ack."""
    rt, message, partner, out = ctx.rt, ctx.message, ctx.partner, ctx.out
    code, reason, status = verdict.code, verdict.reason, verdict.status
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
    refused = "rejected" if status == "rejected" else "failed"
    entries = [] if verdict.audited else [_raw_entry(ctx, refused, code, reason)]
    entries.append(_raw_entry(ctx, "dead_lettered", code, reason, dead_id=str(dead_id)))
    await rt.record(*entries)
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


def _raw_entry(ctx: Outbound, event: str, code: str, reason: str, **details: str) -> AuditEvent:
    """An audit entry from the AMQP properties (``out`` may not have been read)."""
    message, out = ctx.message, ctx.out
    return AuditEvent(
        event=event,
        direction="outbound",
        partner=ctx.partner,
        agreement=out.agreement if out else None,
        message_type=message.type,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        outcome="refused" if event != "dead_lettered" else "dead",
        code=code,
        reason=reason,
        details=details,
    )


async def _retry_or_fail(ctx: Outbound, retry: Retry) -> None:
    """Retry later on a delay queue, or dead-letter at the age limit or a permanent error."""
    rt, out = ctx.rt, ctx.out
    assert out is not None
    limit = age_limit(ctx.agreement, rt.settings.delivery.max_age_seconds)
    age = time.time() - out.first_seen
    if age > limit or not retry.retryable:
        why = (
            f"given up after {out.attempt} attempts over {age:.0f} s, the age limit is {limit:g} s"
            if retry.retryable
            else "not retryable"
        )
        await dead_letter(ctx, Refused(retry.code, f"{retry.reason} ({why})", status="failed"))
        return
    s = rt.settings.delivery
    delay = delay_for(out.attempt, s.backoff_initial, s.backoff_max, at_least=retry.retry_after)
    await rt.record(
        ctx.entry(
            "retry",
            "retrying",
            retry.code,
            retry.reason,
            attempt=str(out.attempt),
            delay=str(delay),
        )
    )
    await to_delay_queue(
        ctx,
        delay,
        attempt=out.attempt + 1,
        last_error=f"{retry.code}: {retry.reason}",
        extra={AmqpHeader.FIRST_SEEN: str(out.first_seen)},
    )
    await rt.relay.publish_event(
        ctx.partner,
        "retrying",
        rt.event(
            "retrying",
            message_id=out.message_id,
            correlation_id=out.correlation_id,
            partner=ctx.partner,
            code=retry.code,
            reason=retry.reason,
            attempt=out.attempt,
            next_attempt_in=delay,
        ),
    )
    await ctx.message.ack()
    # the first retry is routine; later ones mean the partner keeps failing
    (log.info if out.attempt <= 1 else log.warning)(
        "delivery_retrying",
        attempt=out.attempt,
        delay=delay,
        code=retry.code,
        reason=retry.reason,
        age_seconds=round(age),
    )


async def _unverified(ctx: Outbound, verdict: Unverified) -> None:
    """The partner says it has the message, but its receipt does not verify.

    Not a failure and not a delivery: the receipt is kept as evidence, the outcome is
    ``unverified_receipt`` (audit entry, event, an error line for the operator), and the
    message is acknowledged: sending it again would only bring a duplicate receipt signed
    the same way. The operator fixes the trust material (a fresh CRL, the partner's new
    signing certificate); the evidence can then be checked again.
    """
    rt, out = ctx.rt, ctx.out
    assert out is not None
    verified, entry = verdict.receipt, verdict.entry
    problem = verified.problem
    assert problem is not None
    await rt.audit.store_evidence(verified.digest, "receipt", verified.evidence, ctx.retention_days)
    await rt.record(
        AuditEvent(
            event="receipt",
            direction="outbound",
            partner=out.partner,
            agreement=ctx.agreement_id,
            message_type=out.message_type,
            message_id=out.message_id,
            correlation_id=out.correlation_id,
            envelope_digest=hexdigest(ctx.digest),
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
            agreement=ctx.agreement_id,
            code=problem.code,
            reason=problem.reason,
            attempt=out.attempt,
            receipt=entry.status,
        ),
    )
    await ctx.message.ack()
    log.error(
        "receipt_unverified",
        code=problem.code,
        reason=problem.reason,
        receipt=entry.status,
        receipt_digest=verified.digest,
        hint="check the partner's CRL and signing certificates; the receipt is kept as evidence",
    )


async def _put_aside(ctx: Outbound, exc: GatewayError) -> None:
    """The state store or the audit log failed: put the message aside for a few seconds.

    Not an attempt (the partner was maybe never asked): the attempt count stays, the age
    limit still counts. The stores log the episode once and readiness is false meanwhile;
    each message is only a debug line. If the broker will not take the copy either, the
    message goes back to its queue after a pause.
    """
    log.debug("delivery_deferred", code=exc.code, reason=exc.reason)
    try:
        await to_delay_queue(ctx, STORE_RETRY_SECONDS)
    except RelayError as relay_exc:
        await requeue_later(ctx.message, relay_exc)
        return
    await ctx.message.ack()


async def _internal_failure(ctx: Outbound, exc: Exception) -> None:
    """Something unexpected (a bug) failed: retry a few times, then dead-letter."""
    message = ctx.message
    failures = _int(header(message.headers or {}, AmqpHeader.INTERNAL_FAILURES)) + 1
    reason = f"{exc.__class__.__name__}: {exc}"[:512]
    try:
        if failures >= MAX_INTERNAL_FAILURES:
            ctx.out = None  # audit from the AMQP properties, as for an unreadable message
            await dead_letter(
                ctx,
                Refused(
                    ErrorCode.GATEWAY_INTERNAL,
                    f"failed {failures} times unexpectedly, last: {reason}",
                    status="failed",
                ),
            )
            return
        await to_delay_queue(
            ctx,
            delay_for(failures, 1.0, 10.0),
            extra={AmqpHeader.INTERNAL_FAILURES: str(failures)},
        )
        await message.ack()
    except Exception as second:  # the stores or the broker as well: give it back
        log.warning("internal_failure_not_settled", error=str(second))
        await give_back(message, reason)


async def to_delay_queue(
    ctx: Outbound,
    delay: int,
    *,
    attempt: int | None = None,
    last_error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """A confirmed copy of the message in the delay queue that returns it in ``delay`` s."""
    rt, message = ctx.rt, ctx.message
    headers = dict(message.headers or {})
    headers.setdefault(AmqpHeader.FIRST_SEEN, str(time.time()))
    if attempt is not None:
        headers[AmqpHeader.ATTEMPT] = attempt
    if last_error is not None:
        headers[AmqpHeader.LAST_ERROR] = last_error[:512]
    headers.update(extra or {})
    await rt.relay.publish(
        rt.relay.names.retry,
        f"{delay}s.{ctx.partner}",
        message.body,
        message_id=message.message_id,
        message_type=message.type,
        correlation_id=message.correlation_id,
        content_type=message.content_type,
        headers=headers,
    )


async def requeue_later(message: IncomingMessage, exc: RelayError) -> None:
    """The broker could not take a publish: give the message back after a pause.

    If the channel is gone the broker has already requeued it; otherwise a
    ``nack(requeue=True)`` returns it, and the queue's delivery limit bounds how often
    this can happen to one message.
    """
    log.warning("relay_publish_failed", code=exc.code, reason=exc.reason)
    await asyncio.sleep(REQUEUE_PAUSE_SECONDS)
    await give_back(message, exc.reason, pause=0)


async def give_back(
    message: IncomingMessage, reason: str, *, pause: float = REQUEUE_PAUSE_SECONDS
) -> None:
    """Return a message to its queue (after a pause, so that a fault does not spin).

    If the channel is gone the broker has already requeued it. The queue's delivery
    limit bounds how often this can happen to one message. The nack is bounded: on a
    connection being lost or closed (a shutdown) it could wait for a reconnection that
    never comes, and the broker requeues an unacknowledged message anyway.
    """
    if message.processed:
        return
    log.warning("delivery_returned_to_queue", reason=reason)
    if pause:
        await asyncio.sleep(pause)
    try:
        async with asyncio.timeout(NACK_TIMEOUT_SECONDS):
            await message.nack(requeue=True)
    except Exception:
        log.info("nack_skipped_channel_closed")


def age_limit(agreement: Agreement | None, default: float) -> float:
    """The message's age limit: the agreement's, else the gateway's default."""
    if agreement is not None and agreement.delivery.max_age_seconds is not None:
        return agreement.delivery.max_age_seconds
    return default


def delay_for(
    attempt: int,
    initial: float,
    maximum: float,
    *,
    at_least: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """The delay queue for retry number ``attempt`` (1-based).

    Exponential from ``initial``, capped at ``maximum``, with "equal jitter": a pause
    drawn between half the backoff and the backoff, so that messages that failed
    together do not come back together. The pause is then rounded to one of the two
    neighbouring queues with the probability that keeps its expected value. A
    partner's Retry-After (``at_least``) is honoured: the smallest queue at least that
    long (up to the longest queue).
    """
    rng = rng or _rng
    if at_least is not None and at_least > 0:
        return next((d for d in DELAYS if d >= at_least), DELAYS[-1])
    backoff = min(initial * (2 ** min(attempt - 1, 32)), maximum)
    pause = rng.uniform(backoff / 2, backoff)
    below = [d for d in DELAYS if d <= pause]
    above = [d for d in DELAYS if d >= pause]
    if not below:
        return DELAYS[0]
    if not above:
        return DELAYS[-1]
    low, high = below[-1], above[0]
    if high == low or high > max(maximum, DELAYS[0]):
        return low
    return high if rng.random() < (pause - low) / (high - low) else low


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
