"""Tests for adapters/ncts.py: NCTS phase-5 messages, XML <-> JSON by the official schemas.

The samples are tests/data/ncts-p5/samples, classified as tests/data/README.md does
(file names do not always tell the truth). Each XSD 1.1 takes over a second to build:
the adapters build one per message type per process, so this module pays that once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import adapters
from adapters import Adapter
from adapters.ncts import MESSAGES, SCHEMA_DIR, xml_schema
from gateway.errors import DecodeError

TESTDATA = Path(__file__).resolve().parents[1] / "data" / "ncts-p5"
SAMPLES = TESTDATA / "samples"
FIVE = tuple(m.lower() for m in MESSAGES)

VALID_XML = [
    "cc007c-valid",
    "cc013c-valid",
    "cc014c-valid",
    "cc015c-valid",
    "cc015c-valid-2",
    "cc044c-valid",
]
INVALID_XML = sorted(
    {p.stem for p in SAMPLES.glob("*.xml") if "-invalid" in p.stem and p.stem[:6] in FIVE}
    | {"cc007c-tooManyNodes", "cc013c-valid-mrn", "cc007c-valid-xi"}
)
OTHER_MESSAGES_XML = ["cc025c-valid", "cc029c-valid", "cc043c-valid", "cc170c-valid"]
VALID_JSON = ["cc007c-valid", "cc015c-valid", "cc044c-valid"]
# Valid against their JSON Schema, but their eMailAddress "string" breaks the XSD's
# e-mail pattern: as XML they cannot exist, so the gateway refuses them (see docs/adapters.md).
JSON_VALID_XSD_INVALID = {"cc013c-valid": "eMailAddress", "cc014c-valid": "eMailAddress"}
DATE_TIME_JSON = ["cc014c-invalid-date-time", "cc044c-invalid-date-time"]
INVALID_JSON = sorted(
    {p.stem for p in SAMPLES.glob("*.json") if p.stem[:6] in {"cc007c", "cc013c", "cc015c"}}
    - {"cc007c-valid", "cc013c-valid", "cc015c-valid"}
    | {
        "cc014c-invalid",
        "cc014c-invalid-message-sender",
        "cc044c-invalid",
        "cc044c-invalid-message-sender",
        "invalid-with-extra-braces",
    }
)


def official_json_validator(code: str) -> jsonschema.Draft7Validator:
    """The official JSON Schema, for the pure-Python validator (the adapter compiles its own).

    Read from the adapter's copy, which test_shipped_schemas_are_unchanged_copies proves
    byte for byte the upstream file.
    """
    schema = json.loads((SCHEMA_DIR / "json-schema" / f"{code.lower()}-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def code_of(stem: str) -> str:
    """``cc015c-valid-2`` -> ``CC015C``."""
    return stem[:6].upper()


@pytest.mark.parametrize("name", ["ncts-p5-xml", "ncts-p5-json"])
def test_registered_and_satisfy_protocol(name: str) -> None:
    """Both NCTS forms are registered adapters."""
    adapter = adapters.get(name)
    assert isinstance(adapter, Adapter)
    assert adapter.name == name


@pytest.mark.parametrize("folder", ["xsd", "json-schema"])
def test_shipped_schemas_are_unchanged_copies(folder: str) -> None:
    """The runtime copies in adapters/schemas/ncts-p5 have the upstream digests, with the licence."""
    upstream = {}
    for line in (TESTDATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        if name.startswith(f"{folder}/"):
            upstream[name] = digest
    shipped = {
        f"{folder}/{copy.name}": hashlib.sha256(copy.read_bytes()).hexdigest()
        for copy in (SCHEMA_DIR / folder).iterdir()
    }
    assert upstream and shipped == upstream
    assert (SCHEMA_DIR / "LICENSE").read_bytes() == (TESTDATA / "LICENSE").read_bytes()


def test_schema_built_once() -> None:
    """An XSD 1.1 is built once per process and reused."""
    assert xml_schema("CC015C") is xml_schema("CC015C")


@pytest.mark.parametrize("stem", VALID_XML)
def test_valid_xml_translates_to_valid_json(stem: str) -> None:
    """Every valid XML sample translates to JSON valid against the official JSON Schema."""
    document = adapters.get("ncts-p5-xml").decode((SAMPLES / f"{stem}.xml").read_bytes())
    assert document.message_type == f"ncts.{code_of(stem)}"
    output = json.loads(adapters.get("ncts-p5-json").encode(document))
    errors = list(official_json_validator(code_of(stem)).iter_errors(output))
    assert errors == []


@pytest.mark.parametrize("stem", VALID_XML)
def test_xml_json_xml_round_trip_is_equivalent(stem: str) -> None:
    """XML -> JSON -> XML gives the same typed data as the original (xmlschema's decoded form)."""
    xml_adapter, json_adapter = adapters.get("ncts-p5-xml"), adapters.get("ncts-p5-json")
    original = (SAMPLES / f"{stem}.xml").read_bytes()
    as_json = json_adapter.encode(xml_adapter.decode(original))
    again = xml_adapter.encode(json_adapter.decode(as_json))
    schema = xml_schema(code_of(stem))
    options: dict[str, Any] = {
        "xmlns_processing": "none",
        "namespaces": {"ncts": "http://ncts.dgtaxud.ec"},
    }
    assert schema.decode(again.decode(), **options) == schema.decode(original.decode(), **options)


@pytest.mark.parametrize("stem", VALID_JSON)
def test_valid_json_translates_to_valid_xml(stem: str) -> None:
    """Every JSON sample valid in both schema languages translates to XML valid against the XSD."""
    document = adapters.get("ncts-p5-json").decode((SAMPLES / f"{stem}.json").read_bytes())
    xml = adapters.get("ncts-p5-xml").encode(document)
    xml_schema(code_of(stem)).validate(xml.decode())


@pytest.mark.parametrize(("stem", "field"), sorted(JSON_VALID_XSD_INVALID.items()))
def test_json_valid_only_for_json_schema_refused(stem: str, field: str) -> None:
    """A sample the JSON Schema accepts but the XSD cannot is refused at the offending field."""
    data = (SAMPLES / f"{stem}.json").read_bytes()
    assert official_json_validator(code_of(stem)).is_valid(json.loads(data))
    with pytest.raises(DecodeError) as info:
        adapters.get("ncts-p5-json").decode(data)
    assert str(info.value.context["location"]).endswith(field)
    assert "XSD" in info.value.reason


@pytest.mark.parametrize("stem", INVALID_XML + OTHER_MESSAGES_XML)
def test_invalid_xml_refused_with_line(stem: str) -> None:
    """Every invalid XML sample (and every message not translated here) is refused by line."""
    with pytest.raises(DecodeError) as info:
        adapters.get("ncts-p5-xml").decode((SAMPLES / f"{stem}.xml").read_bytes())
    assert info.value.code == "TRANSLATE_SCHEMA"
    assert str(info.value.context["location"]).startswith("line ")


@pytest.mark.parametrize("stem", INVALID_JSON)
def test_invalid_json_refused_with_path(stem: str) -> None:
    """Every invalid JSON sample is refused with a JSON path or a line and column."""
    with pytest.raises(DecodeError) as info:
        adapters.get("ncts-p5-json").decode((SAMPLES / f"{stem}.json").read_bytes())
    location = str(info.value.context["location"])
    assert location.startswith(("$", "line "))


@pytest.mark.parametrize("stem", DATE_TIME_JSON)
def test_bad_date_time_caught_by_xsd_after_translation(stem: str) -> None:
    """A date-time the JSON Schema lets through is refused by the XSD, at its JSON path."""
    data = (SAMPLES / f"{stem}.json").read_bytes()
    assert official_json_validator(code_of(stem)).is_valid(json.loads(data))
    with pytest.raises(DecodeError) as info:
        adapters.get("ncts-p5-json").decode(data)
    assert info.value.context["location"] == f"$['n1:{code_of(stem)}'].preparationDateAndTime"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("cc015c-valid-2", {"goods", "trader", "transport", "personal", "financial"}),
        ("cc014c-valid", {"trader"}),
    ],
)
def test_categories_from_content(stem: str, expected: set[str]) -> None:
    """An NCTS message's categories follow from what it contains."""
    adapter = adapters.get("ncts-p5-xml")
    assert adapter.categories(adapter.decode((SAMPLES / f"{stem}.xml").read_bytes())) == expected


def test_xml_with_doctype_refused() -> None:
    """NCTS XML is parsed with the same safe parser: a DOCTYPE is refused."""
    data = b'<!DOCTYPE x [<!ENTITY a "b">]><ncts:CC015C xmlns:ncts="http://ncts.dgtaxud.ec"/>'
    with pytest.raises(DecodeError) as info:
        adapters.get("ncts-p5-xml").decode(data)
    assert info.value.code == "TRANSLATE_UNSAFE"
