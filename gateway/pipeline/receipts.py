"""Receipts, both ways.

The receiver signs one receipt list per request (``answer``: the inbound pipeline's ``receipt``
step); the sender POSTs and verifies that list once (``post_and_verify``).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import structlog

from gateway.audit.chain import AuditEvent
from gateway.errors import (
    AuditError,
    AuthError,
    DeliveryError,
    ErrorCode,
    GatewayError,
    SignatureError,
    StoreError,
)
from gateway.pipeline.context import RETRY_AFTER_SECONDS, Inbound, Reply, VerifiedReceipt
from gateway.pipeline.runtime import Runtime, canonical, hexdigest
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import ReceiptEntry

log = structlog.get_logger(__name__)

#: receipt statuses that say the partner has the message
DELIVERED = frozenset({"accepted", "duplicate"})


async def post_and_verify(rt: Runtime, partner: str, envelopes: list[bytes]) -> VerifiedReceipt:
    """POST one envelope, or several as a batch; verify the signed receipt list once.

    A list that does not verify with what we trust (a stale CRL, an unknown or broken
    signature) is read unverified and says so (``problem``), so that a partner who has
    the message is not sent it again and again, and the message is not reported failed.
    Raises ``DeliveryError`` when the answer is no receipt list at all.
    """
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


def _bad_receipt(status: int, partner: str, exc: GatewayError) -> DeliveryError:
    return DeliveryError(
        f"answer {status} from {partner} is not a valid signed receipt: {exc.code}: {exc.reason}",
        code=ErrorCode.DELIVERY_BAD_RECEIPT,
    )


async def answer(rt: Runtime, partner: str, done: list[Inbound], *, batch: bool = False) -> Reply:
    """The ``receipt`` step: answer a request (see ``_answer``); 503 when the stores fail.

    No receipt without its audit entries: the sender tries again later. What was
    published already is then published again, marked as a possible duplicate.
    """
    try:
        return await _answer(rt, partner, done, batch=batch)
    except (StoreError, AuditError) as exc:
        log.debug("inbound_unavailable", code=exc.code, reason=exc.reason)
        for ctx in done:
            if ctx.published and ctx.entry is not None:
                with contextlib.suppress(GatewayError):
                    await rt.store.release(ctx.partner, ctx.entry.message_id, uncertain=True)
        return Reply(503, {"Retry-After": str(int(RETRY_AFTER_SECONDS))})


async def _answer(rt: Runtime, partner: str, done: list[Inbound], *, batch: bool) -> Reply:
    """Sign one receipt list for every final answer, keep it, audit, answer.

    Envelopes without an entry (503, 429: try again later) are left out of the list,
    so the sender retries exactly those. A batch is answered 200 when the list has at
    least one entry; otherwise with the first envelope's status.

    In a batch, the refused envelopes are audited together, as one ``rejected``
    entry (code ``BATCH_REFUSED``) that names the receipt list and lists each one's
    message id, digest and code (the reasons are in the receipt, kept as evidence):
    a batch of junk costs one entry, not two per part.
    """
    final = [c for c in done if c.entry is not None]
    later = [c for c in done if c.entry is None]
    headers: dict[str, str] = {}
    retry_after = max((c.retry_after or 0.0 for c in later), default=0.0)
    if later and retry_after:
        headers["Retry-After"] = str(int(retry_after + 0.999))
    if not final:
        waiting = [e for c in done for e in c.entries]
        if waiting:
            await rt.record(*waiting)
        return Reply(done[0].status or 503, headers)
    receipt_id = envelope.new_id()
    entries = [c.entry for c in final if c.entry is not None]
    receipt = envelope.build_receipt(rt.gateway_id, partner, entries, receipt_id=receipt_id)
    signed = rt.signer.sign(receipt)
    evidence, receipt_digest = canonical(receipt)
    await rt.audit.store_evidence(receipt_digest, "receipt", evidence, 3650)
    events: list[AuditEvent] = [e for c in later for e in c.entries]
    refused: list[ReceiptEntry] = []
    for ctx in final:
        entry = ctx.entry
        assert entry is not None
        if batch and entry.status == "rejected":
            refused.append(entry)
            continue
        first = ctx.entries[0] if ctx.entries else None
        events += ctx.entries
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
        events.append(_batch_refusals(partner, refused, receipt_id, receipt_digest, len(done)))
    await rt.record(*events)
    for ctx in final:
        entry = ctx.entry
        if ctx.published and entry is not None and entry.status == "accepted":
            await rt.store.mark_published(ctx.partner, entry.message_id, receipt_id)
    return Reply(
        200 if batch else final[0].status or 200,
        headers,
        body=signed,
        content_type="application/xml",
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
        code=ErrorCode.BATCH_REFUSED,
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
