"""The outbound pipeline step by step on the fakes: every verdict and how ``settle`` carries it out.

XA's real settings, keys, state store and audit log; the in-memory relay as XA's broker and a
fake XB (receipts signed with XB's key) as the partner. No broker, no network.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date
from typing import Any

import pytest

from gateway.contract import AmqpHeader
from gateway.errors import ErrorCode
from gateway.partner_client.memory import Busy, Later, Refuse, SignedBy, Unreachable
from gateway.pipeline import settle as settle_module
from gateway.pipeline.context import Delivered, Outbound, Refused, Retry, Unverified
from gateway.pipeline.outbound import OutboundPipeline
from gateway.pipeline.settle import MAX_INTERNAL_FAILURES, STORE_RETRY_SECONDS, settle
from tests.gateway.pipeline.conftest import (
    AGREEMENT,
    MakeSide,
    agreement_with,
    back_office_sends,
    example,
    fake_xb,
    signer_of,
    take,
    take_all,
)

NOT_PERSONAL = ("goods", "transport", "trader", "enforcement", "financial")
STEPS = ["read", "agreement", "decide", "redact", "encode", "envelope", "sign", "store", "send"]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message the broker would not take is given back at once (not after a second)."""
    monkeypatch.setattr(settle_module, "REQUEUE_PAUSE_SECONDS", 0.0)


def dead_codes(side: Any) -> list[str]:
    return [m.headers[AmqpHeader.CODE] for m in side.relay.dead_letters()]


async def test_the_steps_are_declared_in_order_and_an_allowed_message_is_delivered(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """Each step adds what it found; ``send`` reaches ``Delivered``; ``settle`` tells and acks."""
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    pipeline = OutboundPipeline(xa.rt)
    assert [step.__name__ for step in pipeline.steps] == STEPS
    message = await back_office_sends(xa)
    ctx = Outbound(xa.rt, "XB", message)
    steps = dict(zip(STEPS, pipeline.steps, strict=True))

    await steps["read"](ctx)
    assert ctx.out is not None and ctx.out.message_id == message.message_id
    await steps["agreement"](ctx)
    assert ctx.agreement is not None and ctx.agreement.id == AGREEMENT and not ctx.resent
    await steps["decide"](ctx)
    assert ctx.decision is not None and ctx.decision.allowed
    assert xa.codes() == [("policy_decision", "POLICY_ALLOW")]  # audited where it is decided
    await steps["redact"](ctx)
    assert ctx.document is not None
    assert all("identityDocuments" not in p for p in ctx.document.body["persons"])
    await steps["encode"](ctx)
    assert ctx.payload.startswith(b"<")
    await steps["envelope"](ctx)
    await steps["sign"](ctx)
    assert ctx.signed is not None and ctx.digest.startswith("sha256:")
    assert await xa.rt.store.outbox_get(ctx.out.message_id) is None
    await steps["store"](ctx)
    assert await xa.rt.store.outbox_get(ctx.out.message_id) == (ctx.signed, ctx.digest)
    assert partner.received == []
    await steps["send"](ctx)
    assert ctx.verdict == Delivered("accepted")
    assert partner.envelopes == [ctx.signed]
    assert not message.processed

    await settle(ctx)
    assert message.processed and xa.relay.unacked(xa.relay.names.outbound_queue("XB")) == 0
    assert xa.codes() == [("policy_decision", "POLICY_ALLOW"), ("delivered", None)]
    [event] = xa.events()
    assert (event["status"], event["message_id"], event["receipt"]) == (
        "delivered",
        ctx.out.message_id,
        "accepted",
    )


# every policy refusal an outbound message can meet (POLICY_RATE is back-pressure outbound:
# it waits for a token and is never a refusal), and how to provoke it
POLICY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (code, agreement changes (or settings changes), what the back office sends)
    ("POLICY_NO_AGREEMENT", {"settings": {"agreements": {}}}, {}),
    (
        "POLICY_NOT_PARTY",
        {"parties": ["XA", "XC"], "rename_flows": True},
        {},
    ),
    ("POLICY_TERMINATED", {"status": "terminated", "status_reason": "denounced"}, {}),
    ("POLICY_SUSPENDED", {"status": "suspended", "status_reason": "under review"}, {}),
    (
        "POLICY_NOT_YET_VALID",
        {"valid_from": date(2099, 1, 1), "valid_until": date(2099, 12, 31)},
        {},
    ),
    ("POLICY_EXPIRED", {"valid_from": date(2020, 1, 1), "valid_until": date(2020, 12, 31)}, {}),
    ("POLICY_MESSAGE_TYPE", {}, {"message_type": "maa.spontaneous"}),
    ("POLICY_FORMAT", {"flow": {"payload_formats": ["maa-xml"]}}, {}),
    ("POLICY_DATA_CATEGORY", {"flow": {"data_categories": ["goods", "personal"]}}, {}),
    (
        "POLICY_PERSONAL_DATA",
        {"flow": {"personal_data": False, "data_categories": list(NOT_PERSONAL)}},
        {},
    ),
    ("POLICY_PURPOSE_MISSING", {}, {"blank": "purpose"}),
    ("POLICY_SIZE", {"flow": {"max_size_bytes": 100}}, {}),
    ("POLICY_NO_REQUEST", {}, {"message_type": "maa.refusal", "correlation_id": "XB-unknown"}),
]


@pytest.mark.parametrize(
    ("code", "changes", "sends"), [pytest.param(*case, id=case[0]) for case in POLICY_CASES]
)
async def test_a_policy_refusal_is_audited_by_decide_and_dead_lettered_by_settle(
    pair: dict[str, Any],
    make_side: MakeSide,
    code: str,
    changes: dict[str, Any],
    sends: dict[str, Any],
) -> None:
    """The decision is audited, the message dead-lettered with the code, the partner not asked."""
    settings = pair["XA"]
    changes = dict(changes)
    setting_changes = changes.pop("settings", {})
    if changes.pop("rename_flows", False):
        flows = settings.agreements[AGREEMENT].model_dump()["flows"]
        changes["flows"] = {"XA->XC": flows["XA->XB"], "XC->XA": flows["XB->XA"]}
    if changes:
        setting_changes["agreements"] = agreement_with(settings, **changes)
    partner = fake_xb(pair)
    xa = await make_side(settings, partner, **setting_changes)
    sends = dict(sends)
    body = None
    if "blank" in sends:  # present for the schema, empty for the policy
        document = json.loads(example("maa.request"))
        document[sends.pop("blank")] = "   "
        body = json.dumps(document).encode()
    message = await back_office_sends(xa, body, **sends)

    ctx = await OutboundPipeline(xa.rt).handle("XB", message)

    assert isinstance(ctx.verdict, Refused) and ctx.verdict.code == code
    assert message.processed
    assert xa.codes() == [("policy_decision", code), ("rejected", code), ("dead_lettered", code)]
    assert dead_codes(xa) == [code]
    assert [e["status"] for e in xa.events()] == ["rejected"]
    assert partner.received == []


async def test_the_partner_is_never_refused_for_its_rate_outbound_the_message_waits(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """Outbound, a rate limit is back-pressure: the second message waits for a token."""
    settings = pair["XA"]
    agreements = agreement_with(settings, flow={"rate_per_minute": 600, "burst": 1})
    xa = await make_side(settings, fake_xb(pair), agreements=agreements)
    pipeline = OutboundPipeline(xa.rt)
    first = await pipeline.handle("XB", await back_office_sends(xa))
    started = time.monotonic()
    second = await pipeline.handle("XB", await back_office_sends(xa))
    assert first.verdict == second.verdict == Delivered("accepted")
    assert time.monotonic() - started >= 0.05  # one token every 0.1 s


@pytest.mark.parametrize(
    ("missing", "code"),
    [
        ({"message_id": ""}, "RELAY_NO_MESSAGE_ID"),
        ({"fmt": None}, "RELAY_NO_FORMAT"),
    ],
)
async def test_a_message_without_what_the_contract_requires_is_refused_by_read(
    pair: dict[str, Any], make_side: MakeSide, missing: dict[str, Any], code: str
) -> None:
    """No message id or no format header: dead-lettered, audited from the AMQP properties."""
    xa = await make_side(pair["XA"], fake_xb(pair))
    message = await back_office_sends(xa, **missing)
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert ctx.verdict == Refused(code, ctx.verdict.reason if ctx.verdict else "")
    assert ctx.out is None and message.processed
    assert xa.codes() == [("rejected", code), ("dead_lettered", code)]
    assert dead_codes(xa) == [code]


async def test_a_body_the_adapter_cannot_read_is_a_translation_refusal(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    xa = await make_side(pair["XA"], fake_xb(pair))
    message = await back_office_sends(xa, b'{"messageType": "maa.request", "persons": 7')
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert isinstance(ctx.verdict, Refused) and ctx.verdict.code.startswith("TRANSLATE_")
    assert dead_codes(xa) == [ctx.verdict.code]


async def test_a_refusal_by_the_partner_is_audited_once_by_send_and_dead_lettered(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    message = await back_office_sends(xa, message_id="XA-refused-by-xb")
    partner.answer("XA-refused-by-xb", Refuse("POLICY_PURPOSE_MISSING"))
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert isinstance(ctx.verdict, Refused) and ctx.verdict.audited
    assert ctx.verdict.code == "POLICY_PURPOSE_MISSING"
    assert xa.codes() == [
        ("policy_decision", "POLICY_ALLOW"),
        ("rejected", "POLICY_PURPOSE_MISSING"),
        ("dead_lettered", "POLICY_PURPOSE_MISSING"),
    ]
    assert dead_codes(xa) == ["POLICY_PURPOSE_MISSING"]


async def test_a_busy_partner_means_a_retry_on_the_delay_queue_then_the_same_bytes_again(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """503 with Retry-After 2: the copy waits in the 2 s queue; the next attempt resends the
    stored envelope (the building steps are skipped) and is delivered."""
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    pipeline = OutboundPipeline(xa.rt)
    partner.next_calls(Busy(503, retry_after=2))
    message = await back_office_sends(xa)
    first = await pipeline.handle("XB", message)
    assert first.verdict == Retry(
        ErrorCode.DELIVERY_RETRY_LATER, first.verdict.reason if first.verdict else "", True, 2.0
    )
    assert message.processed
    [waiting] = xa.relay.messages(xa.relay.names.retry_queue(2))
    assert waiting.headers[AmqpHeader.ATTEMPT] == 2
    assert ("retry", "DELIVERY_RETRY_LATER") in xa.codes()
    assert [e["status"] for e in xa.events()] == ["retrying"]

    await xa.relay.advance(3)  # the delay queue's TTL passes: back in the partner's queue
    again = await take(xa.relay, xa.relay.names.outbound_queue("XB"))
    second = await pipeline.handle("XB", again)
    assert second.resent and second.verdict == Delivered("accepted")
    assert second.signed == first.signed
    assert partner.envelopes[-1] == first.signed
    assert [c for c in xa.codes() if c[0] == "policy_decision"] == [
        ("policy_decision", "POLICY_ALLOW")
    ]  # decided once


async def test_an_unreachable_partner_past_the_age_limit_is_dead_lettered_as_failed(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    partner.next_calls(Unreachable())
    old = str(time.time() - 3 * 86400)  # the agreement's age limit is one day
    message = await back_office_sends(xa, headers={AmqpHeader.FIRST_SEEN: old})
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert isinstance(ctx.verdict, Retry) and ctx.verdict.code == "DELIVERY_UNREACHABLE"
    assert dead_codes(xa) == ["DELIVERY_UNREACHABLE"]
    assert [e["status"] for e in xa.events()] == ["failed"]
    assert xa.relay.messages(xa.relay.names.retry_queue(1)) == []


async def test_a_partial_batch_delivers_the_rest_and_retries_what_was_left_out(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """One POST for three envelopes; the partner leaves one out of its list (Retry-After 3)."""
    settings = pair["XA"]
    batching = {"XB": settings.partners["XB"].model_copy(update={"batch_max": 3})}
    partner = fake_xb(pair)
    xa = await make_side(settings, partner, partners={**settings.partners, **batching})
    pipeline = OutboundPipeline(xa.rt)
    for n in range(3):
        await xa.relay.publish(
            xa.relay.names.outbound,
            "XB",
            example("maa.request"),
            message_id=f"XA-batch-{n}",
            message_type="maa.request",
            headers={AmqpHeader.FORMAT: "national-json", AmqpHeader.AGREEMENT: AGREEMENT},
        )
    messages = await take_all(xa.relay, xa.relay.names.outbound_queue("XB"), 3)
    partner.answer("XA-batch-1", Later(retry_after=3), times=1)
    done = await asyncio.gather(*(pipeline.handle("XB", m) for m in messages))
    assert len(partner.received) == 1  # one POST
    verdicts = {ctx.message.message_id: ctx.verdict for ctx in done}
    assert verdicts["XA-batch-0"] == verdicts["XA-batch-2"] == Delivered("accepted")
    left_out = verdicts["XA-batch-1"]
    assert isinstance(left_out, Retry) and left_out.code == "DELIVERY_RETRY_LATER"
    assert left_out.retry_after == 3
    assert [m.message_id for m in xa.relay.messages(xa.relay.names.retry_queue(4))] == [
        "XA-batch-1"
    ]
    assert all(m.processed for m in messages)


async def test_a_message_the_partner_has_already_is_delivered_as_a_duplicate(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """The back office sends the same id again: the stored bytes go, the receipt says duplicate."""
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    pipeline = OutboundPipeline(xa.rt)
    first = await pipeline.handle("XB", await back_office_sends(xa, message_id="XA-twice"))
    again = await pipeline.handle("XB", await back_office_sends(xa, message_id="XA-twice"))
    assert first.verdict == Delivered("accepted")
    assert again.resent and isinstance(again.verdict, Delivered)
    assert (again.verdict.status, again.verdict.code) == ("duplicate", "DUPLICATE")
    assert partner.envelopes == [first.signed, first.signed]


async def test_an_acceptance_whose_receipt_does_not_verify_is_kept_as_unverified(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """Signed with a key XA does not pin for XB: not delivered, not failed — unverified, acked."""
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    partner.next_calls(SignedBy(signer_of(pair["XA"])))
    message = await back_office_sends(xa)
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert isinstance(ctx.verdict, Unverified) and ctx.verdict.entry.status == "accepted"
    assert message.processed and dead_codes(xa) == []
    assert xa.codes()[-1] == ("receipt", "SIG_CERT_UNTRUSTED")
    assert [e["status"] for e in xa.events()] == ["unverified_receipt"]


async def test_a_refusal_whose_receipt_does_not_verify_proves_nothing_and_is_retried(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    partner.next_calls(SignedBy(signer_of(pair["XA"])))
    message = await back_office_sends(xa, message_id="XA-unverified-refusal")
    partner.answer("XA-unverified-refusal", Refuse("POLICY_EXPIRED"))
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert isinstance(ctx.verdict, Retry) and ctx.verdict.code == "DELIVERY_RECEIPT_UNVERIFIED"
    assert dead_codes(xa) == [] and message.processed


async def test_a_failing_store_puts_the_message_aside_without_counting_an_attempt(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    xa = await make_side(pair["XA"], fake_xb(pair))
    await xa.rt.store.close()
    message = await back_office_sends(xa)
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert ctx.verdict is None and message.processed
    [aside] = xa.relay.messages(xa.relay.names.retry_queue(STORE_RETRY_SECONDS))
    assert aside.message_id == message.message_id
    assert AmqpHeader.ATTEMPT not in aside.headers
    assert dead_codes(xa) == []


async def test_a_broker_that_will_not_take_the_event_gets_the_message_back(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """Delivered and audited, but the event is not confirmed: nacked back to its queue; the
    next attempt sends the same bytes (and will get a duplicate receipt)."""
    partner = fake_xb(pair)
    xa = await make_side(pair["XA"], partner)
    message = await back_office_sends(xa)
    xa.relay.fail_publish(ErrorCode.RELAY_NACKED, exchange=xa.relay.names.events)
    ctx = await OutboundPipeline(xa.rt).handle("XB", message)
    assert ctx.verdict == Delivered("accepted") and message.processed
    [back] = xa.relay.messages(xa.relay.names.outbound_queue("XB"))
    assert back.message_id == message.message_id and back.redelivered


async def test_a_bug_is_retried_a_few_times_then_dead_lettered_as_internal(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    xa = await make_side(pair["XA"], fake_xb(pair))
    pipeline = OutboundPipeline(xa.rt)

    async def bug(ctx: Outbound) -> None:
        raise ZeroDivisionError("a bug")

    pipeline.steps = (bug, *pipeline.steps)
    message = await back_office_sends(xa)
    await pipeline.handle("XB", message)
    [later] = xa.relay.messages(xa.relay.names.retry_queue(1))
    assert later.headers[AmqpHeader.INTERNAL_FAILURES] == "1"

    last = await back_office_sends(
        xa, headers={AmqpHeader.INTERNAL_FAILURES: str(MAX_INTERNAL_FAILURES - 1)}
    )
    await pipeline.handle("XB", last)
    assert dead_codes(xa) == ["GATEWAY_INTERNAL"] and last.processed
