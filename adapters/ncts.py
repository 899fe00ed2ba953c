"""``ncts-p5-xml`` and ``ncts-p5-json``: EU NCTS phase-5 transit messages.

The messages CC007C, CC013C, CC014C, CC015C and CC044C, in their two official
forms, travel as supporting documents of MAA replies and spontaneous information.

- XML: validated with ``xmlschema.XMLSchema11`` against the official XSD 1.1
  (``schemas/ncts-p5/xsd``, version 60.4.16). Building one schema takes over a
  second, so each is built once per process, on first use or by ``preload()``.
- JSON: validated with jsonschema against the official JSON Schema
  (``schemas/ncts-p5/json-schema``, draft-07).

The document body is the JSON form: ``{"n1:CC015C": {"@PhaseID": …, "messageSender": …}}``
(message type ``ncts.CC015C``). Translation is driven by the XSD: xmlschema decodes
and encodes with a converter that writes attributes as ``@name``, repeated
elements as lists, empty complex elements as ``{}``, and on the way back puts JSON
keys (which have no order) in the order the XSD sequence requires. An empty JSON
list means no element. Decimals travel as JSON numbers: an XML decimal that a JSON
number (a double) cannot carry exactly is refused, never rounded.

A JSON document is also checked against the XSD, by translating it: JSON Schema
alone lets through values the XSD refuses (a 14th month in a dateTime, an e-mail
address without ``@``), and such a document could never be delivered as XML.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, cast
from xml.etree import ElementTree

import xmlschema
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from lxml import etree

from adapters._support import check_message_type, load_json, parse_xml, short
from adapters.base import Document
from gateway.errors import DecodeError, EncodeError, ErrorCode

NCTS_NS = "http://ncts.dgtaxud.ec"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
MESSAGES = ("CC007C", "CC013C", "CC014C", "CC015C", "CC044C")
SCHEMA_DIR = Path(__file__).parent / "schemas" / "ncts-p5"

_NAMESPACES = {"n1": NCTS_NS, "xsi": XSI_NS}
_OUTPUT_NAMESPACES = {"ncts": NCTS_NS, "xsi": XSI_NS}

#: Keys of the JSON form whose presence reveals a data category (see ``categories``).
CATEGORY_KEYS: dict[str, frozenset[str]] = {
    "goods": frozenset({"ConsignmentItem", "Commodity", "GoodsMeasure", "HouseConsignment"}),
    "transport": frozenset(
        {
            "DepartureTransportMeans",
            "ActiveBorderTransportMeans",
            "TransportEquipment",
            "CountryOfRoutingOfConsignment",
            "PlaceOfLoading",
            "PlaceOfUnloading",
            "modeOfTransportAtTheBorder",
            "inlandModeOfTransport",
        }
    ),
    "trader": frozenset(
        {
            "HolderOfTheTransitProcedure",
            "Consignor",
            "Consignee",
            "Representative",
            "Carrier",
            "AdditionalSupplyChainActor",
            "TraderAtDestination",
        }
    ),
    "personal": frozenset({"ContactPerson"}),
    "financial": frozenset({"amountToBeCovered"}),
}


class _Converter(xmlschema.UnorderedConverter):
    """The JSON form's conventions: ``@attr``, lists, and ``{}`` for an empty element."""

    def element_decode(
        self, data: Any, xsd_element: Any, xsd_type: Any = None, level: int = 0
    ) -> Any:
        value = super().element_decode(data, xsd_element, xsd_type, level)
        xsd_type = xsd_type or xsd_element.type
        if value is None and xsd_type.is_complex() and not xsd_type.has_simple_content():
            return {}
        return value


@cache
def xml_schema(code: str) -> xmlschema.XMLSchema11:
    """The official XSD 1.1 of one message (about 1.2 s to build; built once)."""
    return xmlschema.XMLSchema11(str(SCHEMA_DIR / "xsd" / f"{code.lower()}.xsd"))


@cache
def json_validator(code: str) -> Draft7Validator:
    """The official JSON Schema of one message, compiled once."""
    path = SCHEMA_DIR / "json-schema" / f"{code.lower()}-schema.json"
    return Draft7Validator(json.loads(path.read_text(encoding="utf-8")))


def preload(codes: Iterable[str] = MESSAGES) -> None:
    """Build the schemas now (at start), so that no message waits for a build."""
    for code in codes:
        xml_schema(code)
        json_validator(code)


def message_code(message_type: str, fmt: str) -> str:
    """``ncts.CC015C`` -> ``CC015C``; EncodeError for any other type."""
    code = message_type.removeprefix("ncts.")
    if not message_type.startswith("ncts.") or code not in MESSAGES:
        raise EncodeError(
            f"{message_type!r} is not an NCTS message this gateway translates"
            f" ({', '.join('ncts.' + m for m in MESSAGES)})",
            code=ErrorCode.TRANSLATE_ENCODE,
            location="$",
            format=fmt,
        )
    return code


def _root_code(body: Any) -> str | None:
    if isinstance(body, dict) and len(body) == 1:
        key = str(next(iter(body)))
        code = key.removeprefix("n1:")
        if key.startswith("n1:") and code in MESSAGES:
            return code
    return None


def _xml_path_to_json(path: str | None) -> str:
    """``/n1:CC015C/Consignment/grossMass`` -> ``$['n1:CC015C'].Consignment.grossMass``."""
    if not path:
        return "$"
    parts = [p for p in path.split("/") if p]
    out = "$"
    for part in parts:
        out += f"['{part}']" if ":" in part else f".{part}"
    return out


def _prepare(value: Any) -> Any:
    """The JSON form ready for xmlschema: exact decimals, no empty lists."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    return value


def _jsonable(value: Any, path: str, fmt: str) -> Any:
    """xmlschema's decoded data as JSON values; refuse a decimal a double cannot carry."""
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and "." not in str(value) and "E" not in str(value):
            return int(value)
        number = float(value)
        if Decimal(repr(number)) != value:
            raise DecodeError(
                f"the decimal {value} cannot be carried exactly as a JSON number",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location=path,
                format=fmt,
            )
        return number
    if isinstance(value, dict):
        return {
            k: _jsonable(v, f"{path}/{k}", fmt)
            for k, v in value.items()
            if not k.startswith("@xmlns")
        }
    if isinstance(value, list):
        return [_jsonable(v, f"{path}[{i + 1}]", fmt) for i, v in enumerate(value)]
    return value


def to_xml_element(body: Any, code: str, fmt: str, *, encoding: bool) -> ElementTree.Element:
    """Encode the JSON form as XML with the official XSD; located error if it is not valid."""
    schema = xml_schema(code)
    element: Any
    errors: list[Any]
    try:
        element, errors = schema.encode(  # type: ignore[misc]
            _prepare(body),
            path=f"n1:{code}",
            namespaces=_NAMESPACES,
            preserve_root=True,
            converter=_Converter,
            validation="lax",
        )
    except (xmlschema.XMLSchemaException, ValueError, TypeError) as exc:
        errors, element = [exc], None
    if errors or element is None:
        first = errors[0] if errors else None
        reason = getattr(first, "reason", None) or str(first)
        location = _xml_path_to_json(getattr(first, "path", None))
        cls = EncodeError if encoding else DecodeError
        raise cls(
            f"not valid against the NCTS {code} XSD: {short(str(reason))}",
            code=ErrorCode.TRANSLATE_ENCODE if encoding else ErrorCode.TRANSLATE_SCHEMA,
            location=location,
            format=fmt,
        )
    return cast(ElementTree.Element, element)


def _check_json(body: Any, code: str, fmt: str, *, encoding: bool) -> None:
    error = best_match(json_validator(code).iter_errors(body))
    if error is None:
        return
    reason = f"not valid against the NCTS {code} JSON Schema: {short(error.message)}"
    if encoding:
        raise EncodeError(
            reason, code=ErrorCode.TRANSLATE_ENCODE, location=error.json_path, format=fmt
        )
    raise DecodeError(reason, code=ErrorCode.TRANSLATE_SCHEMA, location=error.json_path, format=fmt)


def categories(document: Document) -> frozenset[str]:
    """Data categories of an NCTS message, from the keys of its JSON form.

    Goods (consignment items, commodities), transport (means of transport,
    equipment, routing, places of loading), trader (holder, consignor, consignee,
    representative, carrier, supply chain actors), personal (a named contact
    person), financial (a guarantee amount). Simple on purpose: a key counts when
    it is present, whatever its content.
    """
    keys: set[str] = set()
    stack: list[Any] = [document.body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return frozenset(name for name, marks in CATEGORY_KEYS.items() if keys & marks)


class NctsXmlAdapter:
    """NCTS phase-5 messages in their official XML form."""

    name = "ncts-p5-xml"
    media_type = "application/xml"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        preload()

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse safely, validate against the XSD 1.1 and read the JSON form."""
        root = parse_xml(data, self.name)
        qname = etree.QName(root)
        location = f"line {root.sourceline}"
        if qname.namespace != NCTS_NS or qname.localname not in MESSAGES:
            raise DecodeError(
                f"{root.tag} is not one of the NCTS messages translated here"
                f" ({', '.join(MESSAGES)})",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location=location,
                format=self.name,
            )
        code = qname.localname
        check_message_type(f"ncts.{code}", message_type, self.name, location)
        data_, errors = xml_schema(code).decode(  # type: ignore[misc]
            root,
            namespaces=_NAMESPACES,
            preserve_root=True,
            xmlns_processing="none",
            converter=_Converter,
            decimal_type=Decimal,
            validation="lax",
        )
        if errors:
            first = errors[0]
            line = getattr(first, "sourceline", None) or root.sourceline
            raise DecodeError(
                f"not valid against the NCTS {code} XSD: {short(str(first.reason))} ({first.path})",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location=f"line {line}",
                format=self.name,
            )
        body = _jsonable(data_, "", self.name)
        return Document(f"ncts.{code}", body)

    def encode(self, document: Document) -> bytes:
        """Write the document as XML valid against the XSD 1.1."""
        code = message_code(document.message_type, self.name)
        element = to_xml_element(document.body, code, self.name, encoding=True)
        text = xmlschema.etree_tostring(element, namespaces=_OUTPUT_NAMESPACES)
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + str(text).encode("utf-8") + b"\n"

    def categories(self, document: Document) -> frozenset[str]:
        """Data categories present in the message (see ``adapters.ncts.categories``)."""
        return categories(document)


class NctsJsonAdapter:
    """NCTS phase-5 messages in their official JSON form."""

    name = "ncts-p5-json"
    media_type = "application/json"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        preload()

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse, validate against the JSON Schema and, by translating it, the XSD."""
        body = load_json(data, self.name)
        code = _root_code(body)
        if code is None:
            raise DecodeError(
                "an NCTS JSON message is an object with one key, the message"
                f" ({', '.join('n1:' + m for m in MESSAGES)})",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location="$",
                format=self.name,
            )
        check_message_type(f"ncts.{code}", message_type, self.name, "$")
        _check_json(body, code, self.name, encoding=False)
        to_xml_element(body, code, self.name, encoding=False)
        return Document(f"ncts.{code}", body)

    def encode(self, document: Document) -> bytes:
        """Write the document as JSON valid against the JSON Schema."""
        code = message_code(document.message_type, self.name)
        if _root_code(document.body) != code:
            raise EncodeError(
                f"the body of a {document.message_type} has the single key n1:{code}",
                code=ErrorCode.TRANSLATE_ENCODE,
                location="$",
                format=self.name,
            )
        _check_json(document.body, code, self.name, encoding=True)
        return json.dumps(document.body, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    def categories(self, document: Document) -> frozenset[str]:
        """Data categories present in the message (see ``adapters.ncts.categories``)."""
        return categories(document)
