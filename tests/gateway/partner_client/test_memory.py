"""The fake partner (gateway/partner_client/memory.py) kept honest against a real gateway.

The contract tests post the same envelopes, signed with XA's key, either to a
``MemoryPartner`` playing XB or through XA's real ``PartnerClient`` over mutual TLS
to a running XB, and read both answers with the verifier XA's outbound side uses
(XB's pinned signing certificates). The fake-only tests at the end cover the
scripted faults no real gateway produces on demand.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

import adapters
from gateway.config.models import Settings
from gateway.errors import AuthError, DeliveryError, SignatureError, http_status
from gateway.partner_client.client import Answer, PartnerClient
from gateway.partner_client.memory import (
    Busy,
    Later,
    MemoryPartner,
    Refuse,
    ServerProblem,
    SignedBy,
    Unreachable,
    Unsigned,
)
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from gateway.trust.identity import TrustStore
from gateway.xml import envelope
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing
from gateway.xml.envelope import Header, Receipt
from maagw_testing.broker import RABBITMQ_URL, delete_topology, provision_pair
from maagw_testing.services import require_service

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "maa-xml"

#: XA may not send XB spontaneous information under the demo agreement
REFUSED_TYPE, REFUSED_CODE = "maa.spontaneous", "POLICY_MESSAGE_TYPE"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    """Certificates and configuration of XA and XB, made once for the module."""
    return provision_pair(tmp_path_factory.mktemp("partners"), tag="fake")


def signer(settings: Settings) -> signing.Signer:
    return signing.Signer.from_files(settings.signing.key, settings.signing.cert)


def make_envelope(
    message_type: str = "maa.request", *, receiver: str = "XB", message_id: str | None = None
) -> etree._Element:
    """An unsigned XA → XB envelope carrying an example maa-xml payload."""
    payload = (EXAMPLES / f"{message_type}.xml").read_bytes()
    exchange = adapters.get("maa-xml")
    document = exchange.decode(payload, message_type=message_type)
    header = Header(
        message_id=message_id or f"XA-{uuid.uuid4().hex[:16]}",
        sender="XA",
        receiver=receiver,
        agreement="xa-xb-maa",
        message_type=message_type,
        created=datetime.now(UTC),
        payload_format="maa-xml",
        categories=tuple(sorted(exchange.categories(document))),
    )
    return envelope.build_envelope(header, payload, "application/xml")


@dataclass
class Side:
    """XA's view of XB: a client (the fake, or the real one to a running XB) and XA's keys."""

    kind: str
    client: PartnerClient | MemoryPartner
    xa: Settings
    xb: Settings

    def sign(self, root: etree._Element) -> bytes:
        """Sign as XA's gateway does."""
        return signer(self.xa).sign(root)

    def read(self, answer: Answer) -> Receipt:
        """Verify and read a receipt as XA's outbound side does (XB's pinned certificates)."""
        verified = signing.verify(answer.body, TrustStore(self.xa.partners).signing_certs("XB"))
        return envelope.parse_receipt(verified.root)

    def refuses(self, message_id: str, code: str) -> None:
        """Say that XB refuses ``message_id`` with ``code`` (the real one decides by itself)."""
        if isinstance(self.client, MemoryPartner):
            self.client.answer(message_id, Refuse(code))


def fake_partner(pair: dict[str, Settings]) -> MemoryPartner:
    """A fake XB with XB's signing key that verifies XA's envelopes as XB pins them."""
    return MemoryPartner(
        "XB",
        signer(pair["XB"]),
        client_id="XA",
        sender_certs=TrustStore(pair["XB"].partners).signing_certs("XA"),
    )


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.rabbitmq)])
async def side(request: pytest.FixtureRequest, pair: dict[str, Settings]) -> AsyncIterator[Side]:
    """The fake XB, or XA's real client to a real XB over mutual TLS (XB's broker objects deleted after)."""
    xa, xb = pair["XA"], pair["XB"]
    if request.param == "memory":
        yield Side("memory", fake_partner(pair), xa, xb)
        return
    require_service("RabbitMQ", "127.0.0.1", 5672)
    gateway = Gateway(xb)
    await gateway.start()
    client = PartnerClient(xa.partners, TrustStore(xa.partners), xa.tls, timeout=20)
    try:
        yield Side("real", client, xa, xb)
    finally:
        await client.close()
        await gateway.stop()
        await delete_topology(RABBITMQ_URL, Names(xb.broker.prefix), list(xb.partners))


def digest_of(signed: bytes) -> str:
    """The digest a receipt quotes for an envelope."""
    return signing.document_digest(xmlsafe.parse(signed))


# --- contract: the same assertions on the fake and on a real XB -------------------------------


async def test_an_envelope_is_accepted_with_a_receipt_that_verifies(side: Side) -> None:
    """200 and one signed ``accepted`` entry quoting the envelope's id and digest, XB → XA."""
    root = make_envelope()
    signed = side.sign(root)
    answer = await side.client.post("XB", signed)
    assert (answer.status, answer.retry_after, answer.server_problem) == (200, None, None)
    receipt = side.read(answer)
    assert (receipt.sender, receipt.receiver) == ("XB", "XA")
    [entry] = receipt.entries
    assert (entry.message_id, entry.digest, entry.status, entry.code) == (
        envelope.parse_envelope(root).header.message_id,
        digest_of(signed),
        "accepted",
        None,
    )


async def test_the_same_envelope_again_is_a_duplicate_naming_the_first_receipt(
    side: Side,
) -> None:
    """Posted twice: the second receipt says ``duplicate`` and names the first receipt's id."""
    signed = side.sign(make_envelope())
    first = side.read(await side.client.post("XB", signed))
    answer = await side.client.post("XB", signed)
    assert answer.status == 200
    [entry] = side.read(answer).entries
    assert (entry.status, entry.code, entry.original_receipt) == (
        "duplicate",
        "DUPLICATE",
        first.receipt_id,
    )


async def test_a_policy_refusal_is_a_signed_rejection_with_its_code_and_status(
    side: Side,
) -> None:
    """A message type the agreement forbids: the code's HTTP status and a signed ``rejected`` entry."""
    root = make_envelope(REFUSED_TYPE)
    side.refuses(envelope.parse_envelope(root).header.message_id, REFUSED_CODE)
    answer = await side.client.post("XB", side.sign(root))
    assert answer.status == http_status(REFUSED_CODE) == 403
    [entry] = side.read(answer).entries
    assert (entry.status, entry.code) == ("rejected", REFUSED_CODE)
    assert entry.reason


async def test_an_envelope_signed_with_a_key_xb_does_not_pin_is_refused_the_same_way(
    side: Side,
) -> None:
    """Signed with XB's own key instead of XA's: the code ``signing.verify`` gives, signed."""
    root = make_envelope()
    signed = signer(side.xb).sign(root)
    with pytest.raises(SignatureError) as caught:
        signing.verify(signed, TrustStore(side.xb.partners).signing_certs("XA"))
    answer = await side.client.post("XB", signed)
    assert answer.status == http_status(caught.value.code)
    [entry] = side.read(answer).entries
    assert (entry.status, entry.code, entry.digest) == (
        "rejected",
        caught.value.code,
        digest_of(signed),
    )


async def test_an_envelope_for_another_receiver_is_refused(side: Side) -> None:
    """Addressed to XC: ``ENVELOPE_WRONG_RECEIVER`` (400) in a signed receipt."""
    answer = await side.client.post("XB", side.sign(make_envelope(receiver="XC")))
    assert answer.status == 400
    [entry] = side.read(answer).entries
    assert (entry.status, entry.code) == ("rejected", "ENVELOPE_WRONG_RECEIVER")


async def test_a_batch_is_answered_with_one_receipt_list_in_its_order(side: Side) -> None:
    """Three envelopes, one refused by policy: 200 and one list, entries in the batch's order."""
    roots = [make_envelope(), make_envelope(REFUSED_TYPE), make_envelope()]
    ids = [envelope.parse_envelope(r).header.message_id for r in roots]
    side.refuses(ids[1], REFUSED_CODE)
    signed = [side.sign(r) for r in roots]
    answer = await side.client.post_batch("XB", signed)
    assert (answer.status, answer.retry_after) == (200, None)
    receipt = side.read(answer)
    assert [(e.message_id, e.digest, e.status, e.code) for e in receipt.entries] == [
        (ids[0], digest_of(signed[0]), "accepted", None),
        (ids[1], digest_of(signed[1]), "rejected", REFUSED_CODE),
        (ids[2], digest_of(signed[2]), "accepted", None),
    ]


# --- the fake alone: scripted faults and what it records --------------------------------------


@pytest.fixture
def fake(pair: dict[str, Settings]) -> Iterator[MemoryPartner]:
    """A fake XB."""
    yield fake_partner(pair)


@pytest.fixture
def xa(pair: dict[str, Settings]) -> Side:
    """XA's keys and verifier around the fake (no client of its own)."""
    return Side("memory", fake_partner(pair), pair["XA"], pair["XB"])


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "DELIVERY_THROTTLED"), (503, "DELIVERY_RETRY_LATER"), (502, "DELIVERY_HTTP_502")],
)
async def test_a_busy_partner_raises_a_retryable_delivery_error(
    fake: MemoryPartner, xa: Side, status: int, code: str
) -> None:
    """``Busy``: the real client's ``DeliveryError`` for that status, with its Retry-After."""
    fake.next_calls(Busy(status, retry_after=2))
    signed = xa.sign(make_envelope())
    with pytest.raises(DeliveryError) as caught:
        await fake.post("XB", signed)
    assert (caught.value.code, caught.value.retryable, caught.value.retry_after) == (code, True, 2)
    assert fake.envelopes == [signed]
    assert (await fake.post("XB", signed)).status == 200


@pytest.mark.parametrize(
    ("fault", "code"),
    [(Unreachable(), "DELIVERY_UNREACHABLE"), (Unreachable(tls=True), "DELIVERY_TLS")],
)
async def test_an_unreachable_partner_raises_and_receives_nothing(
    fake: MemoryPartner, xa: Side, fault: Unreachable, code: str
) -> None:
    """A timeout or a failed handshake: ``DeliveryError`` with the real client's code; nothing received."""
    fake.next_calls(fault)
    with pytest.raises(DeliveryError) as caught:
        await fake.post("XB", xa.sign(make_envelope()))
    assert caught.value.code == code
    assert fake.received == []


async def test_a_partial_batch_leaves_envelopes_out_with_retry_after(
    fake: MemoryPartner, xa: Side
) -> None:
    """``Later`` for one message: the list answers the others, the answer carries Retry-After."""
    roots = [make_envelope() for _ in range(3)]
    ids = [envelope.parse_envelope(r).header.message_id for r in roots]
    fake.answer(ids[1], Later(retry_after=2.5), times=1)
    signed = [xa.sign(r) for r in roots]
    answer = await fake.post_batch("XB", signed)
    assert (answer.status, answer.retry_after) == (200, 3.0)
    assert [e.message_id for e in xa.read(answer).entries] == [ids[0], ids[2]]
    again = await fake.post_batch("XB", [signed[1]])
    assert [(e.message_id, e.status) for e in xa.read(again).entries] == [(ids[1], "accepted")]
    assert fake.message_ids == [*ids, ids[1]]
    assert [r.batch for r in fake.received] == [True, True]


async def test_a_single_envelope_answered_later_raises_with_retry_after(
    fake: MemoryPartner, xa: Side
) -> None:
    """``Later`` on a single POST: no receipt, the 503's ``DeliveryError`` with Retry-After."""
    root = make_envelope()
    fake.answer(envelope.parse_envelope(root).header.message_id, Later(retry_after=4))
    with pytest.raises(DeliveryError) as caught:
        await fake.post("XB", xa.sign(root))
    assert (caught.value.code, caught.value.retry_after) == ("DELIVERY_RETRY_LATER", 4.0)


async def test_a_refusal_scripted_once_is_followed_by_acceptance(
    fake: MemoryPartner, xa: Side
) -> None:
    """``answer(..., times=1)``: refused the first time, accepted the next."""
    root = make_envelope()
    fake.answer(envelope.parse_envelope(root).header.message_id, Refuse("POLICY_EXPIRED"), times=1)
    signed = xa.sign(root)
    first = await fake.post("XB", signed)
    assert (first.status, xa.read(first).entries[0].code) == (403, "POLICY_EXPIRED")
    second = await fake.post("XB", signed)
    assert (second.status, xa.read(second).entries[0].status) == (200, "accepted")


async def test_a_reused_message_id_with_another_envelope_is_refused(
    fake: MemoryPartner, xa: Side
) -> None:
    """The same id with other bytes after an acceptance: ``ENVELOPE_ID_REUSED``.

    ECDSA signatures are randomised: the same envelope signed twice differs in its bytes.
    """
    root = make_envelope()
    await fake.post("XB", xa.sign(copy.deepcopy(root)))
    answer = await fake.post("XB", xa.sign(root))
    assert xa.read(answer).entries[0].code == "ENVELOPE_ID_REUSED"


async def test_an_unsigned_or_wrongly_signed_receipt_does_not_verify(
    fake: MemoryPartner, xa: Side
) -> None:
    """``Unsigned`` and ``SignedBy`` an unpinned key: the receipt reads, but does not verify."""
    fake.next_calls(Unsigned(), SignedBy(signer(xa.xa)))
    for _ in range(2):
        answer = await fake.post("XB", xa.sign(make_envelope()))
        with pytest.raises(SignatureError):
            xa.read(answer)
        receipt = envelope.parse_receipt(xmlsafe.parse(answer.body))
        assert receipt.entries[0].status == "accepted"
    assert xa.read(await fake.post("XB", xa.sign(make_envelope()))).entries[0].status == (
        "accepted"
    )


async def test_a_server_certificate_problem_comes_with_the_answer(
    fake: MemoryPartner, xa: Side
) -> None:
    """``ServerProblem``: the answer arrives with ``server_problem`` set, as on a stale CRL."""
    stale = AuthError("XB's CRL is past its nextUpdate", code="AUTH_CRL_STALE")
    fake.next_calls(ServerProblem(stale))
    answer = await fake.post("XB", xa.sign(make_envelope()))
    assert answer.server_problem is stale
    assert answer.status == 200


async def test_a_partner_the_fake_does_not_play_is_a_key_error(
    fake: MemoryPartner, xa: Side
) -> None:
    """Posting to another partner id fails as the real client does for an unknown partner."""
    with pytest.raises(KeyError):
        await fake.post("XC", xa.sign(make_envelope()))
