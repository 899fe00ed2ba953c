"""Tests for adapters/_maa_spec.py: one declaration, three shipped schemas."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from adapters import _maa_spec as spec


@pytest.mark.parametrize("filename", sorted(spec.GENERATED))
def test_shipped_schema_is_generated_from_the_spec(filename: str) -> None:
    """The schema files in adapters/schemas are exactly what the spec generates."""
    shipped = (spec.SCHEMA_DIR / filename).read_text(encoding="utf-8")
    assert shipped == spec.render(filename), "run: python -m adapters._maa_spec"


def test_xsd_is_xsd_1_0_in_the_gateway_namespace() -> None:
    """lxml, an XSD 1.0 processor, compiles the schema; its namespace is urn:maagw:maa:1."""
    tree = etree.parse(str(spec.SCHEMA_DIR / "maa.xsd"))
    etree.XMLSchema(tree)
    assert tree.getroot().get("targetNamespace") == "urn:maagw:maa:1"


def test_ucr_carries_its_wco_id() -> None:
    """The UCR element is annotated with WCO data element 016."""
    tree = etree.parse(str(spec.SCHEMA_DIR / "maa.xsd"))
    xs = {"xs": "http://www.w3.org/2001/XMLSchema"}
    docs = tree.xpath(
        "//xs:element[@name='UCR']/xs:annotation/xs:documentation/text()", namespaces=xs
    )
    assert docs and all("WCO data element 016" in d for d in docs)


def test_json_schema_and_xsd_declare_the_same_required_keys() -> None:
    """A required body key is required in the JSON Schema as its element is in the XSD."""
    schema = json.loads((spec.SCHEMA_DIR / "national-json.schema.json").read_text())
    request = schema["$defs"]["MaaRequestType"]
    declared = {f.key for f in spec.root_spec("maa.request").fields if f.required}
    assert set(request["required"]) == declared | {"messageType"}
