"""Tests for adapters/national_json.py: the national back office's JSON form."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

import adapters
from adapters import Adapter, Document
from adapters.national_json import NationalJsonAdapter, validator
from gateway.errors import DecodeError, EncodeError

EXAMPLES = Path(__file__).parents[2] / "examples" / "national-json"
MAA_TYPES = ["maa.request", "maa.reply", "maa.spontaneous", "maa.refusal", "mra.aeo-status"]


@pytest.fixture(scope="module")
def adapter() -> NationalJsonAdapter:
    """The registered national-json adapter."""
    found = adapters.get("national-json")
    assert isinstance(found, NationalJsonAdapter)
    return found


def example(name: str = "maa.request") -> dict[str, Any]:
    """An example document as a JSON object, to be altered by a test."""
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


def test_registered_and_satisfies_protocol(adapter: NationalJsonAdapter) -> None:
    """The entry point national-json yields an Adapter with its name and media type."""
    assert isinstance(adapter, Adapter)
    assert (adapter.name, adapter.media_type) == ("national-json", "application/json")


def test_validator_compiled_once() -> None:
    """Each message type's validator is compiled once and shared."""
    assert validator("maa.request") is validator("maa.request")


@pytest.mark.parametrize("message_type", MAA_TYPES)
def test_examples_translate_to_maa_xml(adapter: NationalJsonAdapter, message_type: str) -> None:
    """Every example decodes, and the same document comes back through maa-xml."""
    document = adapter.decode((EXAMPLES / f"{message_type}.json").read_bytes())
    assert document.message_type == message_type
    xml = adapters.get("maa-xml")
    assert xml.decode(xml.encode(document)) == document
    assert "messageType" not in document.body


@pytest.mark.parametrize(
    ("change", "location"),
    [
        (lambda d: d["persons"][0].update(birthDate="1979-02-30"), "$.persons[0].birthDate"),
        (lambda d: d["persons"][0].update(birthDate="12/04/1979"), "$.persons[0].birthDate"),
        (lambda d: d["companies"][1].update(vat="x"), "$.companies[1].vat"),
        (lambda d: d.pop("legalBasis"), "$"),
        (lambda d: d.update(measure="spying"), "$.measure"),
        (lambda d: d["goods"][0].update(grossMass="heavy"), "$.goods[0].grossMass"),
        (lambda d: d["transport"].update(route=[]), "$.transport.route"),
        (lambda d: d.update(messageType="maa.unknown"), "$.messageType"),
    ],
    ids=[
        "impossible-date",
        "date-format",
        "unknown-key",
        "missing-legal-basis",
        "bad-enum",
        "string-for-number",
        "empty-list",
        "unknown-type",
    ],
)
def test_schema_errors_located_by_json_path(
    adapter: NationalJsonAdapter, change: Any, location: str
) -> None:
    """A document that breaks the schema is refused at the JSON path of the fault."""
    document = example()
    change(document)
    with pytest.raises(DecodeError) as info:
        adapter.decode(json.dumps(document).encode())
    assert info.value.context["location"] == location
    assert info.value.code == "TRANSLATE_SCHEMA"


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        (b'{"messageType": "maa.request",\n "x": }', "line 2 column 7"),
        (b'{"messageType": NaN}', "$"),
        (b'{"x": "\xff"}', "byte 7"),
        (b"[1, 2]", "$"),
    ],
    ids=["syntax", "nan", "not-utf8", "not-an-object"],
)
def test_unreadable_json_refused(
    adapter: NationalJsonAdapter, payload: bytes, location: str
) -> None:
    """Input that is not a JSON object is refused, located by line and column where possible."""
    with pytest.raises(DecodeError) as info:
        adapter.decode(payload)
    assert info.value.context["location"] == location


def test_semantic_rule_postponement_needs_date(adapter: NationalJsonAdapter) -> None:
    """A postponement without postponedUntil is refused although each field is valid."""
    document = example("maa.refusal")
    del document["postponedUntil"]
    with pytest.raises(DecodeError) as info:
        adapter.decode(json.dumps(document).encode())
    assert "postponedUntil" in info.value.reason


def test_attachment_content_must_be_base64(adapter: NationalJsonAdapter) -> None:
    """An attachment whose content is not base64 is refused at its path."""
    document = example("maa.reply")
    document["attachments"][0]["content"] = "not base64!"
    with pytest.raises(DecodeError) as info:
        adapter.decode(json.dumps(document).encode())
    assert info.value.context["location"] == "$.attachments[0].content"


def test_invalid_attachment_refused_with_inner_location(adapter: NationalJsonAdapter) -> None:
    """A supporting document its adapter refuses is reported with both locations."""
    document = example("maa.reply")
    bad = b'<ncts:CC015C xmlns:ncts="http://ncts.dgtaxud.ec"><messageSender/></ncts:CC015C>'
    document["attachments"][0]["content"] = base64.b64encode(bad).decode()
    with pytest.raises(DecodeError) as info:
        adapter.decode(json.dumps(document).encode())
    assert info.value.code == "TRANSLATE_ATTACHMENT"
    assert str(info.value.context["location"]).startswith("$.attachments[0] line 1")


def test_encode_refuses_body_key_clash(adapter: NationalJsonAdapter) -> None:
    """A body cannot smuggle its own messageType past the document's type."""
    document = adapter.decode((EXAMPLES / "maa.request.json").read_bytes())
    with pytest.raises(EncodeError):
        adapter.encode(Document("maa.request", dict(document.body, messageType="maa.reply")))


def test_categories_include_attachment(adapter: NationalJsonAdapter) -> None:
    """A reply's categories include those of its supporting CC015C declaration."""
    document = adapter.decode((EXAMPLES / "maa.reply.json").read_bytes())
    bare = Document("maa.reply", document.body)
    ncts = adapters.get("ncts-p5-xml")
    attached = ncts.categories(ncts.decode(document.attachments[0].content))
    assert adapter.categories(document) == adapter.categories(bare) | attached
