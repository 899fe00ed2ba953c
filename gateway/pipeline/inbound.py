"""The partner API: receive signed envelopes, answer with signed receipts.

``POST /v1/messages`` with one signed envelope (``application/xml``). The steps,
in order (any refusal ends them with a signed rejection receipt and an audit
entry; nothing is published):

1. safe parse (size, depth, no DTD/entities) — ``SIZE_LIMIT``, ``XML_UNSAFE``
2. signature against the authenticated partner's pinned signing certificates — ``SIG_*``
3. envelope schema and header — ``SCHEMA_INVALID``; sender = TLS identity — ``AUTH_SENDER_MISMATCH``
4. freshness — ``SIG_STALE``; duplicate claim on (sender, message id)
5. payload decode (exchange adapter), agreement policy — ``POLICY_*``, ``TRANSLATE_*``
6. translation into the back office's format, publish with confirms
7. audit (durable), then the signed ``accepted`` receipt

If the broker cannot confirm, the answer is 503 with Retry-After and the claim is
released: the sender keeps the message and tries again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

import adapters
from gateway.audit.chain import AuditEvent
from gateway.contract import REPLY_TYPES, AmqpHeader
from gateway.errors import (
    AdapterError,
    AuditError,
    AuthError,
    EnvelopeError,
    GatewayError,
    PolicyViolation,
    RelayError,
    SignatureError,
    StoreError,
    http_status,
)
from gateway.pipeline.runtime import Runtime, canonical, hexdigest
from gateway.policy.engine import PolicyRequest, evaluate, find_agreement
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import (
    DUPLICATE_RETENTION_SECONDS,
    FUTURE_SKEW_SECONDS,
    Envelope,
    ReceiptEntry,
    _peek_created,
    _peek_message_id,
)

log = structlog.get_logger(__name__)


EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


#: what a 503 asks the sender to wait before it tries again
RETRY_AFTER_SECONDS = 5.0


#: seconds between two audit entries of one partner's refusal allowance being used up
AUDIT_OVER_ALLOWANCE_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the partner is answered: an HTTP status, a receipt entry, maybe Retry-After."""

    status: int
    entry: ReceiptEntry | None
    retry_after: float | None = None
    #: audit entries written together with the receipt's own, before the answer
    events: tuple[AuditEvent, ...] = ()
    sender: str | None = None


class InboundPipeline:
    """Runs the inbound steps for one envelope from an authenticated partner."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        #: partner -> when its refusal allowance was last found used up (and audited)
        self._over_allowance: dict[str, float] = {}

    async def receive(self, partner: str, body: bytes) -> Outcome:
        """Process one envelope if the partner's refusal allowance has room, else a 429."""
        waiting = self.over_allowance(partner)
        return waiting if waiting is not None else await self.process(partner, body)

    def over_allowance(self, partner: str) -> Outcome | None:
        """A 429 while ``partner`` has used up its allowance of refused messages, else None.

        Checked before an envelope costs any work. A 429 is logged (warning) and audited
        (``POLICY_RATE_REFUSALS``) at most once a minute per partner, the others only
        logged at debug: a partner spraying junk cannot flood the audit log either.
        """
        rt = self.rt
        now = time.monotonic()
        wait = rt.limiter.refusal_wait(rt.settings.agreements, partner, rt.gateway_id, now)
        if wait <= 0:
            return None
        events: tuple[AuditEvent, ...] = ()
        last = self._over_allowance.get(partner)
        if last is not None and now - last < AUDIT_OVER_ALLOWANCE_EVERY:
            log.debug("refused_over_allowance", partner=partner, retry_after=wait)
        else:
            self._over_allowance[partner] = now
            reason = (
                f"{partner} made this gateway refuse as many messages as its agreements let it "
                "send; its requests are answered 429 until the allowance refills"
            )
            log.warning("refusal_allowance_used_up", partner=partner, retry_after=wait)
            events = (
                AuditEvent(
                    event="policy_decision",
                    direction="inbound",
                    partner=partner,
                    outcome="deny",
                    code="POLICY_RATE_REFUSALS",
                    reason=reason,
                ),
            )
        return Outcome(429, None, retry_after=max(1.0, wait), events=events)

    async def process(self, partner: str, body: bytes) -> Outcome:
        """Process one envelope; never raises for bad input."""
        raw_digest = "sha256:" + hashlib.sha256(body).hexdigest()
        message_id = "-"
        digest = raw_digest
        env: Envelope | None = None
        try:
            root = xmlsafe.parse(
                body,
                max_bytes=self.rt.settings.partner_api.max_body_bytes,
                max_depth=self.rt.settings.partner_api.max_depth,
            )
            # the evidence form, computed once: the receipt quotes its digest and the
            # audit log stores it
            evidence = signing.document_c14n(root)
            digest = "sha256:" + hashlib.sha256(evidence).hexdigest()
            message_id = _peek_message_id(root) or "-"
            # the signing certificate must be valid at the signing time (the envelope's
            # Created, once it lies in the replay window; else now)
            verified = signing.verify(
                root,
                self.rt.trust.signing_certs(partner),
                at=_peek_created(root),
                evidence=evidence,
            )
            env = envelope.parse_envelope(verified.root)
            message_id = env.header.message_id
            structlog.contextvars.bind_contextvars(
                message_id=message_id, agreement=env.header.agreement
            )
            self._check_header(partner, env)
            return await self._accept(partner, env, verified, digest)
        except (EnvelopeError, SignatureError, AuthError, PolicyViolation, AdapterError) as exc:
            return await self.refuse(partner, message_id, digest, env, exc)
        except GatewayError as exc:
            # the gateway's own state (store, audit, broker) failed: the sender retries. A
            # store failure is logged once per episode by the store's health (error level)
            (log.warning if isinstance(exc, RelayError) else log.debug)(
                "inbound_unavailable", code=exc.code, reason=exc.reason
            )
            return Outcome(503, None, retry_after=RETRY_AFTER_SECONDS)

    def _check_header(self, partner: str, env: Envelope) -> None:
        head = env.header
        if head.sender != partner:
            raise AuthError(
                f"envelope sender {head.sender} is not the authenticated partner {partner}",
                code="AUTH_SENDER_MISMATCH",
            )
        if head.receiver != self.rt.gateway_id:
            raise EnvelopeError(
                f"envelope is addressed to {head.receiver}, not to {self.rt.gateway_id}",
                code="ENVELOPE_WRONG_RECEIVER",
            )
        now = datetime.now(UTC)
        if head.created < now - timedelta(seconds=DUPLICATE_RETENTION_SECONDS):
            raise SignatureError("envelope is older than the replay window", code="SIG_STALE")
        if head.created > now + timedelta(seconds=FUTURE_SKEW_SECONDS):
            raise SignatureError("envelope is created in the future", code="SIG_STALE")

    async def _accept(
        self, partner: str, env: Envelope, verified: signing.Verified, digest: str
    ) -> Outcome:
        rt = self.rt
        head = env.header
        claim = await rt.store.claim(partner, head.message_id, digest, stale_after=60.0)
        if claim.outcome != "claimed" and claim.digest != digest:
            raise EnvelopeError(
                f"message id {head.message_id} was already used for a different envelope "
                f"({claim.digest})",
                code="ENVELOPE_ID_REUSED",
            )
        if claim.outcome == "published":
            entry = ReceiptEntry(
                head.message_id,
                digest,
                "duplicate",
                code="DUPLICATE",
                reason="this message id was received before",
                original_receipt=claim.receipt_id,
            )
            log.info("message_duplicate", partner=partner)
            return Outcome(
                200,
                entry,
                events=(
                    self._audit(
                        env,
                        digest,
                        "duplicate",
                        "ok",
                        "DUPLICATE",
                        "already received and published",
                    ),
                ),
            )
        if claim.outcome == "in_flight":
            # another request (or a process that died, until its claim goes stale) is
            # publishing this id right now
            log.warning(
                "claim_in_flight",
                partner=partner,
                hint="answered 503; the sender tries again later",
            )
            return Outcome(503, None, retry_after=RETRY_AFTER_SECONDS)
        try:
            return await self._publish(partner, env, verified, digest, claim.possible_duplicate)
        except BaseException:
            await rt.store.release(partner, head.message_id)
            raise

    async def _publish(
        self,
        partner: str,
        env: Envelope,
        verified: signing.Verified,
        digest: str,
        possible_duplicate: bool = False,
    ) -> Outcome:
        rt = self.rt
        head = env.header
        agreement = find_agreement(
            rt.settings.agreements, head.agreement, head.sender, head.receiver, head.message_type
        )
        exchange = adapters.get(head.payload_format)
        document = exchange.decode(env.payload, message_type=head.message_type)
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
            size=len(env.payload),
            payload_format=head.payload_format,
            at=datetime.now(UTC),
            purpose=_str(document.body.get("purpose")),
            legal_basis=_str(document.body.get("legalBasis")),
            answers_known_request=answers,
        )
        decision = evaluate(agreement, request)
        if decision.allowed and agreement is not None:
            # only a message the agreement allows takes a token: refusals cost no allowance
            wait = rt.limiter.check(agreement, partner, rt.gateway_id, time.monotonic())
            if wait > 0:
                decision = evaluate(
                    agreement, dataclasses.replace(request, rate_ok=False, retry_after=wait)
                )
        decided = self._audit(
            env,
            digest,
            "policy_decision",
            "allow" if decision.allowed else "deny",
            decision.code,
            decision.reason,
            rule=decision.rule,
        )
        if not decision.allowed:
            await rt.record(decided)
            if decision.code == "POLICY_RATE":
                await rt.store.release(partner, head.message_id)
                return Outcome(429, None, retry_after=max(1.0, decision.retry_after or 1.0))
            raise PolicyViolation(decision.reason, code=decision.code)
        target = adapters.get(rt.settings.back_office.inbound_format)
        # always written anew from what the policy saw, also into the exchange format: the
        # partner's own bytes could be read differently by the back office (a comment
        # inside a text, duplicate JSON keys, another encoding)
        translated = target.encode(document)
        try:
            await rt.relay.publish(
                rt.relay.names.inbound,
                f"{partner}.{head.message_type}",
                translated,
                message_id=head.message_id,
                message_type=head.message_type,
                correlation_id=head.correlation_id,
                content_type=target.media_type,
                headers={
                    AmqpHeader.AGREEMENT: head.agreement,
                    AmqpHeader.FORMAT: target.name,
                    AmqpHeader.SENDER: partner,
                    AmqpHeader.ENVELOPE_DIGEST: digest,
                    # an earlier publish of this id may have reached the broker unconfirmed
                    **({AmqpHeader.POSSIBLE_DUPLICATE: "true"} if possible_duplicate else {}),
                },
            )
        except RelayError as exc:
            log.warning("relay_unavailable", code=exc.code, reason=exc.reason)
            await rt.store.release(
                partner, head.message_id, uncertain=exc.code == "RELAY_UNCONFIRMED"
            )
            return Outcome(503, None, retry_after=RETRY_AFTER_SECONDS)
        try:
            if head.message_type == "maa.request":
                await rt.store.remember_request(head.agreement, partner, head.message_id)
            retention = agreement.retention_days if agreement else 3650
            await rt.audit.store_evidence(
                hexdigest(verified.digest), "envelope", verified.evidence, retention
            )
        except BaseException:
            # published already: the sender's retry must be published marked as a possible
            # duplicate (the release without the mark in _accept then finds nothing to do)
            with contextlib.suppress(GatewayError):
                await rt.store.release(partner, head.message_id, uncertain=True)
            raise
        entry = ReceiptEntry(head.message_id, digest, "accepted")
        log.info("message_published", partner=partner, type=head.message_type)
        return Outcome(
            200,
            entry,
            events=(
                decided,
                self._audit(env, digest, "published", "ok", None, None, format=target.name),
            ),
            sender=partner,
        )

    async def refuse(
        self, partner: str, message_id: str, digest: str, env: Envelope | None, exc: GatewayError
    ) -> Outcome:
        head = env.header if env else None
        rejected = AuditEvent(
            event="rejected",
            direction="inbound",
            partner=partner,
            agreement=head.agreement if head else None,
            message_type=head.message_type if head else None,
            message_id=message_id if message_id != "-" else None,
            correlation_id=head.correlation_id if head else None,
            envelope_digest=hexdigest(digest),
            outcome="refused",
            code=exc.code,
            reason=exc.reason,
        )
        log.warning("message_rejected", partner=partner, code=exc.code, reason=exc.reason)
        # a refusal costs the partner's refusal allowance (RateLimiter.refused)
        self.rt.limiter.refused(
            self.rt.settings.agreements, partner, self.rt.gateway_id, time.monotonic()
        )
        entry = ReceiptEntry(message_id, digest, "rejected", code=exc.code, reason=exc.reason)
        return Outcome(http_status(exc.code), entry, events=(rejected,))

    async def answer(self, partner: str, outcome: Outcome) -> web.Response:
        """Answer one envelope (see ``answer_many``)."""
        return await self.answer_many(partner, [outcome], batch=False)

    async def answer_many(
        self, partner: str, outcomes: list[Outcome], *, batch: bool = True
    ) -> web.Response:
        """Answer (see ``_answer_many``); 503 when the audit log or the state store fails.

        No receipt without its audit entries: the sender tries again later. What was
        published already is then published again, marked as a possible duplicate.
        """
        try:
            return await self._answer_many(partner, outcomes, batch=batch)
        except (StoreError, AuditError) as exc:
            log.debug("inbound_unavailable", code=exc.code, reason=exc.reason)
            for outcome in outcomes:
                entry = outcome.entry
                if outcome.sender is not None and entry is not None:
                    with contextlib.suppress(GatewayError):
                        await self.rt.store.release(
                            outcome.sender, entry.message_id, uncertain=True
                        )
            return web.Response(
                status=503,
                headers={"Retry-After": str(int(RETRY_AFTER_SECONDS))},
                text="try again later\n",
            )

    async def _answer_many(
        self, partner: str, outcomes: list[Outcome], *, batch: bool = True
    ) -> web.Response:
        """Sign one receipt list for every final outcome, keep it, audit, answer.

        Outcomes without an entry (503, 429: try again later) are left out of the
        list, so the sender retries exactly those. A batch is answered 200 when the
        list has at least one entry; otherwise with the first outcome's status.

        In a batch, the refused envelopes are audited together, as one ``rejected``
        entry (code ``BATCH_REFUSED``) that names the receipt list and lists each one's
        message id, digest and code (the reasons are in the receipt, kept as evidence):
        a batch of junk costs one entry, not two per part.
        """
        rt = self.rt
        final = [o for o in outcomes if o.entry is not None]
        later = [o for o in outcomes if o.entry is None]
        headers = {}
        retry_after = max((o.retry_after or 0.0 for o in later), default=0.0)
        if later and retry_after:
            headers["Retry-After"] = str(int(retry_after + 0.999))
        if not final:
            waiting = [e for o in outcomes for e in o.events]
            if waiting:
                await rt.record(*waiting)
            return web.Response(
                status=outcomes[0].status, headers=headers, text="try again later\n"
            )
        receipt_id = envelope.new_id()
        entries = [o.entry for o in final if o.entry is not None]
        receipt = envelope.build_receipt(rt.gateway_id, partner, entries, receipt_id=receipt_id)
        signed = rt.signer.sign(receipt)
        evidence, receipt_digest = canonical(receipt)
        await rt.audit.store_evidence(receipt_digest, "receipt", evidence, 3650)
        events: list[AuditEvent] = [e for o in later for e in o.events]
        refused: list[ReceiptEntry] = []
        for outcome in final:
            entry = outcome.entry
            assert entry is not None
            if batch and entry.status == "rejected":
                refused.append(entry)
                continue
            first = outcome.events[0] if outcome.events else None
            events += outcome.events
            events.append(
                AuditEvent(
                    event="receipt",
                    direction="inbound",
                    partner=partner,
                    agreement=first.agreement if first else None,
                    message_type=first.message_type if first else None,
                    message_id=entry.message_id if entry.message_id != "-" else None,
                    correlation_id=first.correlation_id if first else None,
                    envelope_digest=hexdigest(entry.digest),
                    receipt_digest=receipt_digest,
                    outcome=entry.status,
                    code=entry.code,
                    reason=entry.reason,
                    details={"receipt_id": receipt_id, "entries": len(entries)},
                )
            )
        if refused:
            events.append(
                _batch_refusals(partner, refused, receipt_id, receipt_digest, len(outcomes))
            )
        await rt.record(*events)
        for outcome in final:
            entry = outcome.entry
            if outcome.sender is not None and entry is not None and entry.status == "accepted":
                await rt.store.mark_published(outcome.sender, entry.message_id, receipt_id)
        status = 200 if batch else final[0].status
        return web.Response(
            status=status, body=signed, content_type="application/xml", headers=headers
        )

    def _audit(
        self,
        env: Envelope,
        digest: str,
        event: str,
        outcome: str,
        code: str | None,
        reason: str | None,
        **details: str,
    ) -> AuditEvent:
        head = env.header
        return AuditEvent(
            event=event,
            direction="inbound",
            partner=head.sender,
            agreement=head.agreement,
            message_type=head.message_type,
            message_id=head.message_id,
            correlation_id=head.correlation_id,
            envelope_digest=hexdigest(digest),
            outcome=outcome,
            code=code,
            reason=reason,
            details=details,
        )


def _batch_refusals(
    partner: str, refused: list[ReceiptEntry], receipt_id: str, receipt_digest: str, parts: int
) -> AuditEvent:
    """The one audit entry for every refused envelope of a batch."""
    codes = Counter(e.code or "-" for e in refused)
    summary = ", ".join(f"{code} {count}" for code, count in sorted(codes.items()))
    return AuditEvent(
        event="rejected",
        direction="inbound",
        partner=partner,
        receipt_digest=receipt_digest,
        outcome="refused",
        code="BATCH_REFUSED",
        reason=f"{len(refused)} of the {parts} envelopes of a batch refused ({summary})",
        details={
            "receipt_id": receipt_id,
            "parts": parts,
            "codes": dict(codes),
            "refused": [
                {"message_id": e.message_id, "digest": hexdigest(e.digest), "code": e.code}
                for e in refused
            ],
        },
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
