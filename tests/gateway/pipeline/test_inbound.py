"""The inbound pipeline step by step on the fakes: every answer a partner can get, and the receipt.

XB's real settings, keys, state store and audit log; the in-memory relay as XB's broker; the
envelopes are built and signed as XA's gateway does. No broker, no network.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from lxml import etree

import adapters
from gateway.contract import AmqpHeader
from gateway.errors import ErrorCode, http_status
from gateway.pipeline.context import Inbound
from gateway.pipeline.inbound import InboundPipeline
from gateway.trust.identity import TrustStore
from gateway.xml import envelope
from gateway.xml import signature as signing
from gateway.xml.envelope import Header
from tests.gateway.pipeline.conftest import (
    AGREEMENT,
    EXAMPLES,
    MakeSide,
    Side,
    agreement_with,
    fake_xb,
    signer_of,
)

STEPS = ["admit", "parse", "verify", "claim", "decide", "translate", "publish"]
DS = "{http://www.w3.org/2000/09/xmldsig#}"


def unsigned(
    message_type: str = "maa.request",
    *,
    message_id: str | None = None,
    sender: str = "XA",
    receiver: str = "XB",
    created: datetime | None = None,
    correlation_id: str | None = None,
) -> etree._Element:
    """An XA → XB envelope around the example maa-xml payload, as XA's outbound steps build it."""
    payload = (EXAMPLES / "maa-xml" / f"{message_type}.xml").read_bytes()
    exchange = adapters.get("maa-xml")
    document = exchange.decode(payload, message_type=message_type)
    header = Header(
        message_id=message_id or f"XA-{uuid.uuid4().hex[:12]}",
        sender=sender,
        receiver=receiver,
        agreement=AGREEMENT,
        message_type=message_type,
        created=created or datetime.now(UTC),
        payload_format="maa-xml",
        categories=tuple(sorted(exchange.categories(document))),
        correlation_id=correlation_id,
    )
    return envelope.build_envelope(header, payload, "application/xml")


@pytest.fixture
async def xb(pair: dict[str, Any], make_side: MakeSide) -> Side:
    """XB's runtime on the fakes (its outbound client is never called here)."""
    side: Side = await make_side(pair["XB"], fake_xb(pair))
    return side


def sign_as_xa(pair: dict[str, Any], root: etree._Element) -> bytes:
    return signer_of(pair["XA"]).sign(root)


def receipt_of(pair: dict[str, Any], body: bytes) -> envelope.Receipt:
    """Verify and read a receipt as XA does (XB's pinned signing certificates)."""
    verified = signing.verify(body, TrustStore(pair["XA"].partners).signing_certs("XB"))
    return envelope.parse_receipt(verified.root)


def published(side: Side) -> list[Any]:
    return side.relay.messages(side.relay.names.inbound)


async def test_the_steps_are_declared_in_order_and_an_envelope_is_published_and_receipted(
    pair: dict[str, Any], xb: Side
) -> None:
    pipeline = InboundPipeline(xb.rt)
    assert [step.__name__ for step in pipeline.steps] == STEPS
    root = unsigned()
    message_id = envelope.parse_envelope(root).header.message_id
    ctx = Inbound(xb.rt, "XA", sign_as_xa(pair, root))
    steps = dict(zip(STEPS, pipeline.steps, strict=True))

    await steps["admit"](ctx)
    await steps["parse"](ctx)
    assert ctx.root is not None and ctx.message_id == message_id
    await steps["verify"](ctx)
    assert ctx.env is not None and ctx.env.header.sender == "XA"
    await steps["claim"](ctx)
    assert ctx.claimed
    await steps["decide"](ctx)
    assert ctx.document is not None
    assert [e.code for e in ctx.entries] == ["POLICY_ALLOW"]  # noted where it is decided
    await steps["translate"](ctx)
    assert ctx.translated
    assert published(xb) == []
    await steps["publish"](ctx)
    assert ctx.status == 200 and ctx.entry is not None and ctx.entry.status == "accepted"
    [message] = published(xb)
    assert (message.message_id, message.headers[AmqpHeader.SENDER]) == (message_id, "XA")
    assert AmqpHeader.POSSIBLE_DUPLICATE not in message.headers
    assert xb.audited == []  # nothing audited before the receipt

    reply = await pipeline.answer("XA", [ctx])
    assert (reply.status, reply.content_type) == (200, "application/xml")
    [entry] = receipt_of(pair, reply.body).entries
    assert (entry.message_id, entry.status) == (message_id, "accepted")
    assert xb.codes() == [
        ("policy_decision", "POLICY_ALLOW"),
        ("published", None),
        ("receipt", None),
    ]


async def test_the_same_envelope_again_is_a_duplicate_naming_the_first_receipt(
    pair: dict[str, Any], xb: Side
) -> None:
    pipeline = InboundPipeline(xb.rt)
    body = sign_as_xa(pair, unsigned())
    first = receipt_of(
        pair, (await pipeline.answer("XA", [await pipeline.receive("XA", body)])).body
    )
    again = await pipeline.receive("XA", body)
    reply = await pipeline.answer("XA", [again])
    [entry] = receipt_of(pair, reply.body).entries
    assert (entry.status, entry.code, entry.original_receipt) == (
        "duplicate",
        "DUPLICATE",
        first.receipt_id,
    )
    assert len(published(xb)) == 1


def _tamper_header(root: etree._Element) -> None:
    root.find(f"{{{envelope.NS}}}Header/{{{envelope.NS}}}MessageId").text = "XA-tampered"


def _weak_algorithm(root: etree._Element) -> None:
    method = root.find(f"{DS}Signature/{DS}SignedInfo/{DS}SignatureMethod")
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")


def _second_signature(root: etree._Element) -> None:
    root.append(copy.deepcopy(root.find(f"{DS}Signature")))


def _signature_into_payload(root: etree._Element) -> None:
    signature = root.find(f"{DS}Signature")
    root.remove(signature)
    root.find(f"{{{envelope.NS}}}Header").append(signature)


# the signing profile and the envelope checks: (code, how the envelope is spoilt)
Spoil = Callable[[dict[str, Any]], bytes]
PROFILE_CASES: list[tuple[str, Spoil]] = [
    ("SIG_MISSING", lambda pair: etree.tostring(unsigned())),
    ("SIG_INVALID", lambda pair: _after_signing(pair, _tamper_header)),
    ("SIG_ALGORITHM", lambda pair: _after_signing(pair, _weak_algorithm)),
    ("SIG_PROFILE", lambda pair: _after_signing(pair, _second_signature)),
    ("SIG_WRAPPING", lambda pair: _after_signing(pair, _signature_into_payload)),
    ("SIG_CERT_UNTRUSTED", lambda pair: signer_of(pair["XB"]).sign(unsigned())),
    (
        "SIG_STALE",
        lambda pair: sign_as_xa(pair, unsigned(created=datetime.now(UTC) - timedelta(days=8))),
    ),
    ("AUTH_SENDER_MISMATCH", lambda pair: sign_as_xa(pair, unsigned(sender="XC"))),
    ("ENVELOPE_WRONG_RECEIVER", lambda pair: sign_as_xa(pair, unsigned(receiver="XC"))),
    ("XML_UNSAFE", lambda pair: b'<!DOCTYPE e [<!ENTITY x "y">]><e>&x;</e>'),
    ("SCHEMA_INVALID", lambda pair: signer_of(pair["XA"]).sign(etree.fromstring(b"<e>1</e>"))),
]


def _after_signing(pair: dict[str, Any], spoil: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(sign_as_xa(pair, unsigned()))
    spoil(root)
    return etree.tostring(root)


@pytest.mark.parametrize(
    ("code", "spoil"), [pytest.param(code, spoil, id=code) for code, spoil in PROFILE_CASES]
)
async def test_an_envelope_outside_the_signing_profile_is_refused_with_its_code(
    pair: dict[str, Any], xb: Side, code: str, spoil: Spoil
) -> None:
    """The code's HTTP status, a signed rejection entry, an audit entry; nothing published."""
    pipeline = InboundPipeline(xb.rt)
    ctx = await pipeline.receive("XA", spoil(pair))
    assert ctx.entry is not None and (ctx.entry.status, ctx.entry.code) == ("rejected", code)
    assert ctx.status == http_status(code)
    assert not ctx.claimed and published(xb) == []
    reply = await pipeline.answer("XA", [ctx])
    [entry] = receipt_of(pair, reply.body).entries
    assert (entry.status, entry.code) == ("rejected", code)
    assert xb.codes() == [("rejected", code), ("receipt", code)]


# every policy refusal an inbound envelope can meet, and how to provoke it on XB's side
POLICY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("POLICY_NO_AGREEMENT", {"settings": {"agreements": {}}}, {}),
    ("POLICY_NOT_PARTY", {"parties": ["XB", "XC"], "rename_flows": True}, {}),
    ("POLICY_TERMINATED", {"status": "terminated", "status_reason": "denounced"}, {}),
    ("POLICY_SUSPENDED", {"status": "suspended", "status_reason": "under review"}, {}),
    (
        "POLICY_NOT_YET_VALID",
        {"valid_from": date(2099, 1, 1), "valid_until": date(2099, 12, 31)},
        {},
    ),
    ("POLICY_EXPIRED", {"valid_from": date(2020, 1, 1), "valid_until": date(2020, 12, 31)}, {}),
    ("POLICY_MESSAGE_TYPE", {}, {"message_type": "maa.spontaneous"}),
    ("POLICY_FORMAT", {"flow": {"payload_formats": ["national-json"]}}, {}),
    ("POLICY_DATA_CATEGORY", {"flow": {"data_categories": ["goods", "personal"]}}, {}),
    (
        "POLICY_PERSONAL_DATA",
        {
            "flow": {
                "personal_data": False,
                "data_categories": ["goods", "transport", "trader", "enforcement", "financial"],
            }
        },
        {},
    ),
    ("POLICY_SIZE", {"flow": {"max_size_bytes": 100}}, {}),
    ("POLICY_NO_REQUEST", {}, {"message_type": "maa.refusal", "correlation_id": "XB-unknown"}),
]


@pytest.mark.parametrize(
    ("code", "changes", "sends"), [pytest.param(*case, id=case[0]) for case in POLICY_CASES]
)
async def test_a_policy_refusal_is_audited_by_decide_and_answered_with_a_rejection(
    pair: dict[str, Any],
    make_side: MakeSide,
    code: str,
    changes: dict[str, Any],
    sends: dict[str, Any],
) -> None:
    settings = pair["XB"]
    changes = dict(changes)
    setting_changes = changes.pop("settings", {})
    if changes.pop("rename_flows", False):
        flows = settings.agreements[AGREEMENT].model_dump()["flows"]
        changes["flows"] = {"XC->XB": flows["XA->XB"], "XB->XC": flows["XB->XA"]}
    if changes:
        setting_changes["agreements"] = agreement_with(settings, **changes)
    xb = await make_side(settings, fake_xb(pair), **setting_changes)
    pipeline = InboundPipeline(xb.rt)
    ctx = await pipeline.receive("XA", sign_as_xa(pair, unsigned(**sends)))
    assert ctx.entry is not None and (ctx.entry.status, ctx.entry.code) == ("rejected", code)
    assert ctx.status == http_status(code) == 403
    # the decision is audited when it is taken; the claim is given up; nothing published
    assert xb.codes() == [("policy_decision", code)]
    assert not ctx.claimed and published(xb) == []
    assert (
        await xb.rt.store.claim("XA", ctx.message_id, ctx.digest, stale_after=60)
    ).outcome == "claimed"
    await pipeline.answer("XA", [ctx])
    assert xb.codes() == [("policy_decision", code), ("rejected", code), ("receipt", code)]


async def test_over_the_agreement_rate_the_sender_is_told_to_come_back_later(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """POLICY_RATE inbound: 429 with Retry-After, no receipt entry, the claim given up."""
    settings = pair["XB"]
    agreements = agreement_with(settings, flow={"rate_per_minute": 1, "burst": 1})
    xb = await make_side(settings, fake_xb(pair), agreements=agreements)
    pipeline = InboundPipeline(xb.rt)
    first = await pipeline.receive("XA", sign_as_xa(pair, unsigned()))
    second = await pipeline.receive("XA", sign_as_xa(pair, unsigned()))
    assert first.status == 200
    assert (second.status, second.entry) == (429, None)
    assert second.retry_after is not None and second.retry_after >= 1
    assert ("policy_decision", "POLICY_RATE") in xb.codes()
    reply = await pipeline.answer("XA", [second])
    assert reply.status == 429 and "Retry-After" in reply.headers
    assert len(published(xb)) == 1


async def test_a_partner_that_used_up_its_refusals_is_answered_429_before_any_work(
    pair: dict[str, Any], make_side: MakeSide
) -> None:
    """XA's refusal allowance is the size of its flows to XB: one agreement, burst 1."""
    settings = pair["XB"]
    only = agreement_with(settings, flow={"rate_per_minute": 1, "burst": 1})[AGREEMENT]
    xb = await make_side(settings, fake_xb(pair), agreements={AGREEMENT: only})
    pipeline = InboundPipeline(xb.rt)
    for _ in range(5):
        ctx = await pipeline.receive("XA", b"<junk/>")
        if ctx.status == 429:
            break
    assert ctx.status == 429 and ctx.root is None  # admitted no more: not even parsed
    assert pipeline.over_allowance("XA") is not None
    assert ("policy_decision", "POLICY_RATE_REFUSALS") in [(e.event, e.code) for e in ctx.entries]


async def test_an_id_used_again_for_other_bytes_is_refused(pair: dict[str, Any], xb: Side) -> None:
    pipeline = InboundPipeline(xb.rt)
    await pipeline.receive("XA", sign_as_xa(pair, unsigned(message_id="XA-reused")))
    other = await pipeline.receive("XA", sign_as_xa(pair, unsigned(message_id="XA-reused")))
    assert other.entry is not None and other.entry.code == "ENVELOPE_ID_REUSED"


async def test_an_id_being_published_elsewhere_is_answered_503(
    pair: dict[str, Any], xb: Side
) -> None:
    """A claim in flight (another request publishing it now): try again later, no receipt."""
    body = sign_as_xa(pair, unsigned())
    pipeline = InboundPipeline(xb.rt)
    parsed = Inbound(xb.rt, "XA", body)
    for step in pipeline.steps[:4]:  # admit, parse, verify, claim: the claim is held
        await step(parsed)
    again = await pipeline.receive("XA", body)
    assert (again.status, again.entry, again.retry_after) == (503, None, 5.0)
    assert parsed.claimed and published(xb) == []


async def test_an_unconfirmed_publish_is_a_503_and_the_retry_is_marked_possible_duplicate(
    pair: dict[str, Any], xb: Side
) -> None:
    """The broker took it but never confirmed: 503; the sender's retry is published again with
    the possible-duplicate mark."""
    body = sign_as_xa(pair, unsigned())
    pipeline = InboundPipeline(xb.rt)
    xb.relay.fail_publish(ErrorCode.RELAY_UNCONFIRMED, exchange=xb.relay.names.inbound, lands=True)
    first = await pipeline.receive("XA", body)
    assert (first.status, first.entry) == (503, None)
    again = await pipeline.receive("XA", body)
    assert again.status == 200
    landed, republished = published(xb)
    assert AmqpHeader.POSSIBLE_DUPLICATE not in landed.headers
    assert republished.headers[AmqpHeader.POSSIBLE_DUPLICATE] == "true"


async def test_a_batch_with_a_refused_part_gets_one_list_and_one_audit_entry_for_the_refusals(
    pair: dict[str, Any], xb: Side
) -> None:
    pipeline = InboundPipeline(xb.rt)
    good = await pipeline.receive("XA", sign_as_xa(pair, unsigned()))
    bad = await pipeline.receive("XA", etree.tostring(unsigned()))
    reply = await pipeline.answer("XA", [good, bad], batch=True)
    assert reply.status == 200
    statuses = [(e.status, e.code) for e in receipt_of(pair, reply.body).entries]
    assert statuses == [("accepted", None), ("rejected", "SIG_MISSING")]
    assert ("rejected", "BATCH_REFUSED") in xb.codes()
    assert ("rejected", "SIG_MISSING") not in xb.codes()


async def test_without_its_audit_log_no_receipt_is_given_and_the_publish_is_marked_uncertain(
    pair: dict[str, Any], xb: Side
) -> None:
    """The audit log fails at the receipt: 503; the sender's retry is a possible duplicate."""
    body = sign_as_xa(pair, unsigned())
    pipeline = InboundPipeline(xb.rt)
    ctx = await pipeline.receive("XA", body)
    await xb.rt.audit.close()
    reply = await pipeline.answer("XA", [ctx])
    assert (reply.status, reply.headers.get("Retry-After")) == (503, "5")
    claim = await xb.rt.store.claim("XA", ctx.message_id, ctx.digest, stale_after=60)
    assert (claim.outcome, claim.possible_duplicate) == ("claimed", True)
