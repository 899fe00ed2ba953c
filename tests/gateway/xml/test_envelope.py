"""Unit tests of gateway/xml/envelope.py: envelope and receipt round trips, what parsing refuses."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import EnvelopeError
from gateway.xml import envelope
from gateway.xml.envelope import Header, ReceiptEntry, peek_created, peek_message_id

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
REQUEST_XML = (EXAMPLES / "maa-xml" / "maa.request.xml").read_bytes()
CREATED = datetime(2026, 5, 4, 3, 2, 1, 123000, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def _header(**changes: object) -> Header:
    fields: dict[str, object] = {
        "message_id": "XA-1",
        "sender": "XA",
        "receiver": "XB",
        "agreement": "xa-xb-maa",
        "message_type": "maa.request",
        "created": CREATED,
        "payload_format": "maa-xml",
        "categories": ("goods", "personal"),
        "correlation_id": "XB-0",
        "reference": "UCR-1",
    }
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


def _reparse(root: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(root))


@pytest.mark.parametrize(
    ("payload", "media_type", "encoding"),
    [
        (REQUEST_XML, "application/xml", "xml"),
        (b'{"a": 1}', "application/json", "base64"),
        (b"id;status\n1;valid\n", "text/csv", "base64"),
    ],
    ids=["xml", "json", "csv"],
)
def test_an_envelope_reads_back_as_it_was_built(
    payload: bytes, media_type: str, encoding: str
) -> None:
    """Header, media type and payload survive build -> bytes -> parse."""
    root = envelope.build_envelope(_header(), payload, media_type)
    assert root.find(f"{{{envelope.NS}}}Payload").get("encoding") == encoding  # type: ignore[union-attr]
    parsed = envelope.parse_envelope(_reparse(root))
    assert parsed.header == _header()
    assert parsed.media_type == media_type
    if encoding == "xml":
        assert etree.tostring(etree.fromstring(parsed.payload), method="c14n") == etree.tostring(
            etree.fromstring(payload), method="c14n"
        )
    else:
        assert parsed.payload == payload


def test_comments_and_pis_in_signed_text_are_read_around() -> None:
    """A comment or PI inside a header value or payload text does not cut the value short."""
    root = envelope.build_envelope(
        _header(), b'<p xmlns="urn:x"><t>bicycle parts</t></p>', "application/xml"
    )
    text = (
        etree.tostring(root)
        .replace(b"XA-1<", b"XA<!--c-->-1<")
        .replace(b"bicycle parts", b"bicycle<!--c--> <?pi x?>parts")
    )
    parsed = envelope.parse_envelope(etree.fromstring(text))
    assert parsed.header.message_id == "XA-1"
    payload = etree.fromstring(parsed.payload)
    assert payload[0].text == "bicycle parts"
    assert b"<!--" not in parsed.payload and b"<?pi" not in parsed.payload


def _edit(path: str, value: str | None) -> bytes:
    root = envelope.build_envelope(_header(), REQUEST_XML, "application/xml")
    node = root.find(path, {"e": envelope.NS})
    assert node is not None
    if value is None:
        node.getparent().remove(node)  # type: ignore[union-attr]
    else:
        node.text = value
    return etree.tostring(root)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (_edit("e:Header/e:MessageId", None), "missing MessageId"),
        (_edit("e:Header/e:MessageId", "has space"), "MessageId with a space"),
        (_edit("e:Header/e:Sender", "xa"), "lower-case administration"),
        (_edit("e:Header/e:MessageType", "maa.gossip"), "unknown message type"),
        (_edit("e:Header/e:Created", "2026-05-04T03:02:01+02:00"), "time not in UTC"),
        (b'<Receipt xmlns="urn:maagw:envelope:1" version="1"/>', "a receipt, not an envelope"),
        (
            b'<Envelope xmlns="urn:maagw:envelope:1" version="1"><Header/></Envelope>',
            "empty header",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_an_invalid_envelope_is_refused_as_schema_invalid(data: bytes, what: str) -> None:
    """Anything outside the envelope schema is SCHEMA_INVALID."""
    with pytest.raises(EnvelopeError) as info:
        envelope.parse_envelope(etree.fromstring(data))
    assert info.value.code == "SCHEMA_INVALID", what


def test_an_xml_payload_must_be_one_element() -> None:
    """Two elements in an XML payload are refused."""
    root = envelope.build_envelope(_header(), REQUEST_XML, "application/xml")
    payload = root.find(f"{{{envelope.NS}}}Payload")
    assert payload is not None
    payload.append(etree.fromstring(b'<q xmlns="urn:x"/>'))
    with pytest.raises(EnvelopeError) as info:
        envelope.parse_envelope(_reparse(root))
    assert info.value.code == "SCHEMA_INVALID"


def test_a_base64_payload_is_decoded() -> None:
    """Base64 text (with line breaks) reads back as the original bytes."""
    data = bytes(range(256)) * 10
    root = envelope.build_envelope(_header(), data, "application/octet-stream")
    payload = root.find(f"{{{envelope.NS}}}Payload")
    assert payload is not None
    payload.text = base64.encodebytes(data).decode()
    assert envelope.parse_envelope(_reparse(root)).payload == data


@pytest.mark.parametrize(
    "entries",
    [
        [ReceiptEntry("XA-1", DIGEST, "accepted")],
        [
            ReceiptEntry(
                "XA-2", DIGEST, "duplicate", code="DUPLICATE", reason="seen", original_receipt="r-1"
            ),
            ReceiptEntry("-", DIGEST, "rejected", code="XML_UNSAFE", reason="x" * 2000),
        ],
    ],
    ids=["one", "several"],
)
def test_a_receipt_reads_back_as_it_was_built(entries: list[ReceiptEntry]) -> None:
    """A receipt list round-trips; reasons are cut to the schema's 1024 characters."""
    root = envelope.build_receipt("XB", "XA", entries, receipt_id="r-9", created=CREATED)
    receipt = envelope.parse_receipt(_reparse(root))
    assert (receipt.receipt_id, receipt.sender, receipt.receiver, receipt.created) == (
        "r-9",
        "XB",
        "XA",
        CREATED,
    )
    expected = [
        ReceiptEntry(
            e.message_id,
            e.digest,
            e.status,
            e.code,
            e.reason[:1024] if e.reason else None,
            e.original_receipt,
        )
        for e in entries
    ]
    assert list(receipt.entries) == expected


def test_a_receipt_needs_an_entry() -> None:
    """An empty receipt cannot be built."""
    with pytest.raises(ValueError, match="at least one entry"):
        envelope.build_receipt("XB", "XA", [])


def test_time_is_written_in_utc_with_milliseconds() -> None:
    """Times are ISO 8601 in UTC with Z and read back equal."""
    text = envelope.format_time(CREATED)
    assert text == "2026-05-04T03:02:01.123Z"
    assert envelope.parse_time(text) == CREATED


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (b"<Header><MessageId>m-1</MessageId></Header>", "m-1"),
        (b"<Header><MessageId> m-<!--x-->2 </MessageId></Header>", "m-2"),
        (b"<Header/>", None),
        (b"<Header><MessageId></MessageId></Header>", None),
        (b"<Header><MessageId>" + b"m" * 129 + b"</MessageId></Header>", None),
        (b"<Header><MessageId>a&#10;b</MessageId></Header>", None),
    ],
    ids=["plain", "comment", "missing", "empty", "too-long", "unprintable"],
)
def testpeek_message_id_reads_only_a_plausible_id(xml: bytes, expected: str | None) -> None:
    """The id quoted in a rejection of an unverified envelope is whole, short and printable."""
    ns = b'xmlns="urn:maagw:envelope:1"'
    root = etree.fromstring(b"<Envelope " + ns + b">" + xml + b"</Envelope>")
    assert peek_message_id(root) == expected


@pytest.mark.parametrize(
    ("offset", "inside"),
    [
        (timedelta(0), True),
        (timedelta(days=-6), True),
        (timedelta(days=-8), False),
        (timedelta(minutes=30), False),
    ],
)
def test_the_signing_time_is_the_created_time_inside_the_replay_window(
    offset: timedelta, inside: bool
) -> None:
    """Created is used as the signing time only when it lies in the replay window."""
    created = envelope.utcnow() + offset
    header = envelope.Header(
        message_id="m",
        sender="XA",
        receiver="XB",
        agreement="a",
        message_type="maa.request",
        created=created,
        payload_format="maa-xml",
    )
    root = envelope.build_envelope(header, b"<a xmlns='urn:x'/>", "application/xml")
    peeked = peek_created(root)
    assert (peeked is not None) == inside
    if inside:
        assert peeked is not None and abs((peeked - created).total_seconds()) < 0.01
