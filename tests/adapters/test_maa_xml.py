"""Tests for adapters/maa_xml.py: the canonical MAA XML form."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from lxml import etree

import adapters
from adapters import Adapter, Attachment, Document
from adapters.maa_xml import MaaXmlAdapter, schema
from gateway.errors import DecodeError, EncodeError
from maagw_testing.adapters import bodies, documents

EXAMPLES = Path(__file__).parents[2] / "examples"
MAA_TYPES = ["maa.request", "maa.reply", "maa.spontaneous", "maa.refusal", "mra.aeo-status"]


@pytest.fixture(scope="module")
def adapter() -> MaaXmlAdapter:
    """The registered maa-xml adapter."""
    found = adapters.get("maa-xml")
    assert isinstance(found, MaaXmlAdapter)
    return found


def request_xml() -> bytes:
    """The example request in its canonical form."""
    return (EXAMPLES / "maa-xml" / "maa.request.xml").read_bytes()


def test_registered_and_satisfies_protocol(adapter: MaaXmlAdapter) -> None:
    """The entry point maa-xml yields an Adapter with its name and media type."""
    assert isinstance(adapter, Adapter)
    assert (adapter.name, adapter.media_type) == ("maa-xml", "application/xml")


def test_schema_compiled_once() -> None:
    """The XSD is compiled once per process and shared."""
    assert schema() is schema()


@pytest.mark.parametrize("message_type", MAA_TYPES)
def test_examples_decode_to_their_type(adapter: MaaXmlAdapter, message_type: str) -> None:
    """Every shipped example decodes as the type its file name says, and re-encodes the same."""
    data = (EXAMPLES / "maa-xml" / f"{message_type}.xml").read_bytes()
    document = adapter.decode(data)
    assert document.message_type == message_type
    assert adapter.decode(adapter.encode(document)) == document


@pytest.mark.parametrize("inserted", ["<!-- a comment -->", "<?pi data?>"])
def test_a_comment_or_pi_inside_a_text_does_not_truncate_it(
    adapter: MaaXmlAdapter, inserted: str
) -> None:
    """The text around a comment or processing instruction is read whole, as a signature covers it."""
    whole = "Establishing the customs debt and investigating possible undervaluation"
    data = request_xml().replace(
        f"<Purpose>{whole}</Purpose>".encode(),
        f"<Purpose>Establishing{inserted} the customs debt and investigating possible "
        "undervaluation</Purpose>".encode(),
    )
    assert inserted.encode() in data
    assert adapter.decode(data).body["purpose"] == whole


def test_request_exposes_policy_keys(adapter: MaaXmlAdapter) -> None:
    """A request's purpose and legal basis are plain body keys for the policy engine."""
    body = adapter.decode(request_xml()).body
    assert body["purpose"].startswith("Establishing")
    assert body["legalBasis"].endswith("Article 7")
    assert body["reference"] == "6GB123456789000-INV2026001"


@pytest.mark.parametrize(
    ("mutate", "code", "location"),
    [
        (
            lambda x: x.replace(b"<MeasureCode>verification", b"<MeasureCode>spying"),
            "TRANSLATE_SCHEMA",
            "line",
        ),
        (
            lambda x: x.replace(b"<BirthDate>1979-04-12", b"<BirthDate>1979-02-30"),
            "TRANSLATE_SCHEMA",
            "line",
        ),
        (lambda x: x.replace(b"</MaaRequest>", b""), "TRANSLATE_DECODE", "line"),
        (lambda x: x.replace(b"urn:maagw:maa:1", b"urn:other"), "TRANSLATE_SCHEMA", "line 2"),
    ],
    ids=["bad-enum", "bad-date", "not-well-formed", "foreign-root"],
)
def test_refusals_are_located(
    adapter: MaaXmlAdapter, mutate: object, code: str, location: str
) -> None:
    """Invalid input is refused with a stable code and a line number."""
    with pytest.raises(DecodeError) as info:
        adapter.decode(mutate(request_xml()))  # type: ignore[operator]
    assert info.value.code == code
    assert str(info.value.context["location"]).startswith(location)


def test_schema_error_names_the_line_of_the_fault(adapter: MaaXmlAdapter) -> None:
    """The reported line is the line of the offending element."""
    data = request_xml()
    line = next(i for i, text in enumerate(data.splitlines(), 1) if b"<BirthDate>" in text)
    with pytest.raises(DecodeError) as info:
        adapter.decode(data.replace(b"1979-04-12", b"12/04/1979"))
    assert info.value.context["location"] == f"line {line}"


@pytest.mark.parametrize(
    "payload",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "boom">]>'
        b'<MaaRequest xmlns="urn:maagw:maa:1">&x;</MaaRequest>',
        b'<!DOCTYPE r SYSTEM "http://example.invalid/r.dtd"><MaaRequest xmlns="urn:maagw:maa:1"/>',
        b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<MaaRequest xmlns="urn:maagw:maa:1">&e;</MaaRequest>',
    ],
    ids=["internal-entity", "external-dtd", "external-entity"],
)
def test_doctype_refused(adapter: MaaXmlAdapter, payload: bytes) -> None:
    """A DOCTYPE (and so any entity) is refused before anything is read."""
    with pytest.raises(DecodeError) as info:
        adapter.decode(payload)
    assert info.value.code in {"TRANSLATE_UNSAFE", "TRANSLATE_DECODE"}
    assert b"passwd" not in str(info.value).encode()


def test_type_mismatch_refused(adapter: MaaXmlAdapter) -> None:
    """Asking for a reply and getting a request is refused."""
    with pytest.raises(DecodeError) as info:
        adapter.decode(request_xml(), message_type="maa.reply")
    assert info.value.code == "TRANSLATE_TYPE"


def test_encode_unknown_key_located(adapter: MaaXmlAdapter) -> None:
    """A body key the schema does not know is refused at its JSON path, never dropped."""
    document = adapter.decode(request_xml())
    body = dict(document.body, persons=[dict(document.body["persons"][0], shoeSize="44")])
    with pytest.raises(EncodeError) as info:
        adapter.encode(Document("maa.request", body))
    assert info.value.context["location"] == "$.persons[0].shoeSize"


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"urgency": "whenever"}, "$.urgency"),
        (
            {"goods": [{"description": "tea"}, {"description": "x", "origin": "xx"}]},
            "$.goods[1].origin",
        ),
        (
            {"requestingAuthority": {"name": "A", "country": "XA", "contact": {"name": ""}}},
            "$.requestingAuthority.contact.name",
        ),
    ],
)
def test_encode_invalid_value_refused(
    adapter: MaaXmlAdapter, change: dict[str, object], location: str
) -> None:
    """A value the XSD refuses is refused on encode at the body's JSON path."""
    document = adapter.decode(request_xml())
    with pytest.raises(EncodeError) as info:
        adapter.encode(Document("maa.request", dict(document.body, **change)))
    assert info.value.context["location"] == location


def test_attachment_on_request_refused(adapter: MaaXmlAdapter) -> None:
    """Only replies and spontaneous information carry supporting documents."""
    document = adapter.decode(request_xml())
    attachment = Attachment("aeo-mra-csv", "list.csv", b"")
    with pytest.raises(EncodeError):
        adapter.encode(Document("maa.request", document.body, (attachment,)))


def _reply_with(attachment: Attachment) -> bytes:
    reply = (EXAMPLES / "maa-xml" / "maa.reply.xml").read_bytes()
    root = etree.fromstring(reply)
    ns = "{urn:maagw:maa:1}"
    supporting = root.find(f"{ns}SupportingDocument")
    assert supporting is not None
    supporting.find(f"{ns}FormatCode").text = attachment.format
    supporting.find(f"{ns}Content").text = base64.b64encode(attachment.content).decode()
    return bytes(etree.tostring(root))


def test_reply_attachment_decoded_by_its_adapter(adapter: MaaXmlAdapter) -> None:
    """The example reply carries a CC015C that the NCTS adapter accepts; its categories count."""
    document = adapter.decode((EXAMPLES / "maa-xml" / "maa.reply.xml").read_bytes())
    (attachment,) = document.attachments
    assert attachment.format == "ncts-p5-xml"
    assert adapters.get("ncts-p5-xml").decode(attachment.content).message_type == "ncts.CC015C"
    assert {"goods", "trader"} <= adapter.categories(document)


@pytest.mark.parametrize(
    ("attachment", "code"),
    [
        (Attachment("ncts-p5-xml", "x.xml", b"<not-ncts/>"), "TRANSLATE_ATTACHMENT"),
        (Attachment("no-such-format", "x.bin", b"x"), "TRANSLATE_ATTACHMENT"),
        (Attachment("maa-xml", "nested.xml", b"<x/>"), "TRANSLATE_ATTACHMENT"),
    ],
    ids=["invalid-content", "unknown-format", "nested-maa"],
)
def test_bad_attachment_refused(adapter: MaaXmlAdapter, attachment: Attachment, code: str) -> None:
    """A supporting document its own adapter refuses makes the whole message refused."""
    with pytest.raises(DecodeError) as info:
        adapter.decode(_reply_with(attachment))
    assert info.value.code == code
    assert str(info.value.context["location"]).startswith("line ")


@pytest.mark.parametrize(
    ("body_key", "value", "category"),
    [
        ("persons", [{"familyName": "Doe"}], "personal"),
        ("companies", [{"name": "ACME"}], "trader"),
        ("goods", [{"description": "tea"}], "goods"),
        ("transport", {"route": ["XA"]}, "transport"),
        ("offences", [{"type": "smuggling"}], "enforcement"),
        ("seizures", [{"date": "2026-01-01", "description": "cash"}], "enforcement"),
        ("financial", [{"kind": "payment", "amount": "10.00"}], "financial"),
    ],
)
def test_categories_from_content(
    adapter: MaaXmlAdapter, body_key: str, value: object, category: str
) -> None:
    """Each kind of content reveals its data category, whatever is declared."""
    refusal = adapter.decode((EXAMPLES / "maa-xml" / "maa.spontaneous.xml").read_bytes())
    base = {k: v for k, v in refusal.body.items() if k not in {"transport", "seizures", "offences"}}
    assert adapter.categories(Document("maa.spontaneous", base)) == frozenset()
    document = Document("maa.spontaneous", dict(base, **{body_key: value}))
    assert adapter.categories(adapter.decode(adapter.encode(document))) == {category}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_round_trip_with_national_json(document: Document) -> None:
    """maa-xml -> national-json -> maa-xml gives back the same document."""
    xml, json_ = adapters.get("maa-xml"), adapters.get("national-json")
    as_json = json_.encode(xml.decode(xml.encode(document)))
    again = xml.decode(xml.encode(json_.decode(as_json)))
    assert again == document


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies("maa.reply"), bodies("mra.aeo-status"))
def test_round_trip_with_attachment(reply: dict[str, Any], aeo: dict[str, Any]) -> None:
    """A reply carrying an AEO list survives maa-xml <-> national-json; its trader data counts."""
    xml, json_ = adapters.get("maa-xml"), adapters.get("national-json")
    content = adapters.get("aeo-mra-csv").encode(Document("mra.aeo-status", aeo))
    document = Document("maa.reply", reply, (Attachment("aeo-mra-csv", "list.csv", content),))
    again = xml.decode(xml.encode(json_.decode(json_.encode(document))))
    assert again == document
    assert "trader" in xml.categories(again)
