"""The body shape of the MAA documents, declared once.

Every MAA document (``maa.request``, ``maa.reply``, ``maa.spontaneous``,
``maa.refusal``, ``mra.aeo-status``) has one JSON-like body. This module
declares it as a tree of ``Field`` objects: the body key, the XML element name
(WCO Data Model name where one exists, with the WCO data element id), the simple
type with its constraints, and whether it repeats. From that one declaration come

- the canonical XML schema ``schemas/maa.xsd`` (XSD 1.0, ``urn:maagw:maa:1``),
- the JSON Schemas ``schemas/national-json.schema.json`` and ``schemas/aeo-mra.schema.json``,
- the XML <-> body mapping used by ``maa_xml``.

The shipped schema files are generated: ``python -m adapters._maa_spec`` rewrites
them and a test checks that they are up to date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

NS = "urn:maagw:maa:1"
SCHEMA_DIR = Path(__file__).parent / "schemas"

# The four MAA types carry attachments only where the agreement texts foresee
# supporting documents: replies and spontaneous information.
TYPES_WITH_ATTACHMENTS = frozenset({"maa.reply", "maa.spontaneous"})


@dataclass(frozen=True, slots=True)
class Simple:
    """A simple type: XSD restriction facets and the matching JSON Schema."""

    name: str
    kind: str  # "str" | "int" | "num": how the XML text maps to a JSON value
    base: str
    facets: tuple[tuple[str, str], ...]
    json: dict[str, Any]

    def to_text(self, value: Any) -> str:
        """Render a body value as XML text (the inverse of ``from_text``)."""
        if self.kind == "str":
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {type(value).__name__}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        if self.kind == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise TypeError("expected an integer")
                value = int(value)
            return str(value)
        # xs:decimal has no exponent: 1e-05 is written 0.00001
        return format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)

    def from_text(self, text: str) -> Any:
        """Read XML text (already schema-valid) as a body value."""
        if self.kind == "str":
            return text
        if self.kind == "int":
            return int(text)
        text = text.strip()
        return float(text) if "." in text else int(text)


@dataclass(frozen=True, slots=True)
class Field:
    """One body key and the XML element that carries it."""

    key: str
    tag: str
    type: Simple | Complex
    required: bool = False
    many: bool = False
    wco: str | None = None
    doc: str = ""

    @property
    def qname(self) -> str:
        """The element's name in Clark notation."""
        return f"{{{NS}}}{self.tag}"


@dataclass(frozen=True, slots=True)
class Complex:
    """An object of the body: an XSD complex type (a sequence) and a JSON object."""

    name: str
    fields: tuple[Field, ...]
    doc: str = ""
    by_qname: dict[str, Field] = field(init=False, compare=False, repr=False)
    by_key: dict[str, Field] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_qname", {f.qname: f for f in self.fields})
        object.__setattr__(self, "by_key", {f.key: f for f in self.fields})


# -- simple types --------------------------------------------------------------------------


def _text(name: str, max_length: int) -> Simple:
    return Simple(
        name,
        "str",
        "xs:string",
        (("minLength", "1"), ("maxLength", str(max_length))),
        {"type": "string", "minLength": 1, "maxLength": max_length},
    )


def _pattern(name: str, regex: str, base: str = "xs:string") -> Simple:
    return Simple(
        name, "str", base, (("pattern", regex),), {"type": "string", "pattern": f"^{regex}$"}
    )


def _enum(name: str, *values: str) -> Simple:
    return Simple(
        name,
        "str",
        "xs:string",
        tuple(("enumeration", v) for v in values),
        {"type": "string", "enum": list(values)},
    )


ID = _text("IdentifierType", 35)
SHORT = _text("ShortTextType", 70)
TEXT = _text("TextType", 512)
LONG = _text("LongTextType", 8000)
COUNTRY = _pattern("CountryCodeType", "[A-Z]{2}")
CURRENCY = _pattern("CurrencyCodeType", "[A-Z]{3}")
LANGUAGE = _pattern("LanguageCodeType", "[a-z]{2}")
IBAN = _pattern("IbanType", "[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}")
BIC = _pattern("BicType", "[A-Z0-9]{8}([A-Z0-9]{3})?")
AMOUNT = _pattern("AmountType", "-?[0-9]{1,15}(\\.[0-9]{1,4})?", base="xs:decimal")
DATE = Simple(
    "DateType",
    "str",
    "xs:date",
    (("pattern", "[0-9]{4}-[0-9]{2}-[0-9]{2}"),),
    {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
)
COUNT = Simple(
    "CountType",
    "int",
    "xs:positiveInteger",
    (("maxInclusive", "999999"),),
    {"type": "integer", "minimum": 1, "maximum": 999999},
)
MEASURE = Simple(
    "MeasureType",
    "num",
    "xs:decimal",
    (("minInclusive", "0"), ("maxInclusive", "1000000000000")),
    {"type": "number", "minimum": 0, "maximum": 1_000_000_000_000},
)
MEASURE_REQUESTED = _enum(
    "MeasureCodeType", "information", "verification", "surveillance", "notification-of-documents"
)
URGENCY = _enum("UrgencyCodeType", "normal", "urgent", "very-urgent")
DECISION = _enum("DecisionCodeType", "refused", "postponed")
REFUSAL_REASON = _enum(
    "RefusalReasonCodeType",
    "sovereignty",
    "public-policy",
    "security",
    "legal-restriction",
    "trade-secret",
    "disproportionate",
    "insufficient-information",
    "ongoing-proceedings",
    "other",
)
FINANCIAL_KIND = _enum(
    "FinancialKindCodeType", "invoice", "payment", "duty", "bank-account", "other"
)
LIST_KIND = _enum("ListKindCodeType", "full", "delta")
AEO_STATUS = _enum("AeoStatusCodeType", "certified", "suspended", "revoked")
AEO_TYPE = _enum("AeoTypeCodeType", "AEOC", "AEOS", "AEOF")

# -- complex types -------------------------------------------------------------------------

ADDRESS = Complex(
    "AddressType",
    (
        Field("street", "Line", TEXT, wco="239", doc="street and number"),
        Field("postcode", "PostcodeID", ID, wco="245"),
        Field("city", "CityName", SHORT, required=True, wco="241"),
        Field("country", "CountryCode", COUNTRY, required=True, wco="242"),
    ),
)
CONTACT = Complex(
    "ContactType",
    (
        Field("name", "Name", SHORT, required=True, wco="246"),
        Field("email", "EmailAddressID", TEXT, wco="240", doc="communication, type EM"),
        Field("phone", "PhoneNumberID", ID, wco="240", doc="communication, type TE"),
    ),
    doc="An official's contact; not counted as personal data of the case.",
)
AUTHORITY = Complex(
    "AuthorityType",
    (
        Field("name", "Name", TEXT, required=True),
        Field("country", "CountryCode", COUNTRY, required=True, wco="242"),
        Field("office", "OfficeID", ID, doc="customs office reference number"),
        Field("contact", "Contact", CONTACT),
    ),
)
IDENTITY_DOCUMENT = Complex(
    "IdentityDocumentType",
    (
        Field("type", "TypeCode", SHORT, required=True),
        Field("number", "ID", ID, required=True),
        Field("issuingCountry", "IssuingCountryCode", COUNTRY),
    ),
)
PERSON = Complex(
    "PersonType",
    (
        Field("role", "RoleCode", SHORT, doc="suspect, witness, driver, declarant …"),
        Field("familyName", "FamilyName", SHORT, required=True),
        Field("givenNames", "GivenName", SHORT),
        Field("birthDate", "BirthDate", DATE),
        Field("birthPlace", "BirthPlaceName", SHORT),
        Field("nationality", "NationalityCode", COUNTRY),
        Field("address", "Address", ADDRESS),
        Field("identityDocuments", "IdentityDocument", IDENTITY_DOCUMENT, many=True),
    ),
    doc="A natural person concerned: personal data.",
)
COMPANY = Complex(
    "CompanyType",
    (
        Field("role", "RoleCode", SHORT, doc="exporter, importer, carrier, declarant …"),
        Field("name", "Name", TEXT, required=True, wco="R031"),
        Field("eori", "ID", ID, wco="R032", doc="EORI or national trader identification"),
        Field("aeoId", "AEOMutualRecognitionPartyID", ID, wco="R143"),
        Field("vatNumber", "VATID", ID),
        Field("address", "Address", ADDRESS),
    ),
    doc="A legal person (trader) concerned.",
)
GOODS_ITEM = Complex(
    "GoodsItemType",
    (
        Field("sequence", "SequenceNumeric", COUNT, wco="006"),
        Field("description", "CommodityDescription", TEXT, required=True, wco="137"),
        Field(
            "commodityCode",
            "ClassificationID",
            _pattern("CommodityCodeType", "[0-9]{4,10}"),
            wco="145",
        ),
        Field("origin", "OriginCountryCode", COUNTRY, wco="063"),
        Field("grossMass", "GrossMassMeasure", MEASURE, wco="126", doc="kilograms"),
        Field("packages", "PackageQuantity", COUNT, wco="144"),
    ),
)
TRANSPORT_MEANS = Complex(
    "TransportMeansType",
    (
        Field("mode", "ModeCode", _pattern("TransportModeCodeType", "[0-9]"), wco="T021"),
        Field("identification", "ID", ID, required=True, wco="T004"),
        Field("nationality", "RegistrationNationalityCode", COUNTRY, wco="T014"),
    ),
)
TRANSPORT = Complex(
    "TransportType",
    (
        Field("means", "TransportMeans", TRANSPORT_MEANS, many=True),
        Field("placeOfLoading", "LoadingLocationName", SHORT, wco="L009"),
        Field("placeOfUnloading", "UnloadingLocationName", SHORT),
        Field("route", "RoutingCountryCode", COUNTRY, many=True, wco="064"),
        Field("containers", "TransportEquipmentID", ID, many=True, wco="159"),
    ),
)
OFFENCE = Complex(
    "OffenceType",
    (
        Field("type", "TypeCode", SHORT, required=True, doc="smuggling, undervaluation …"),
        Field("date", "Date", DATE),
        Field("place", "PlaceName", SHORT),
        Field("description", "Description", LONG),
    ),
    doc="An offence or suspected offence: enforcement data.",
)
SEIZURE = Complex(
    "SeizureType",
    (
        Field("date", "Date", DATE, required=True),
        Field("place", "PlaceName", SHORT),
        Field("description", "Description", TEXT, required=True),
    ),
    doc="A seizure or detention: enforcement data.",
)
FINANCIAL = Complex(
    "FinancialItemType",
    (
        Field("kind", "KindCode", FINANCIAL_KIND, required=True),
        Field("amount", "Amount", AMOUNT, wco="378"),
        Field("currency", "CurrencyCode", CURRENCY, wco="135"),
        Field("date", "Date", DATE),
        Field("iban", "IBANID", IBAN),
        Field("bic", "BICID", BIC),
        Field("description", "Description", TEXT),
    ),
    doc="Amounts, payments, bank accounts: financial data.",
)
REFUSAL_REASON_ITEM = Complex(
    "ReasonType",
    (
        Field("code", "Code", REFUSAL_REASON, required=True),
        Field("text", "Text", TEXT),
    ),
)
TRADER = Complex(
    "AeoTraderType",
    (
        Field("traderId", "ID", ID, required=True, wco="R143", doc="EORI-like trader id"),
        Field("name", "Name", TEXT, required=True),
        Field("address", "Address", ADDRESS, required=True),
        Field("status", "StatusCode", AEO_STATUS, required=True),
        Field("aeoType", "AEOTypeCode", AEO_TYPE, required=True),
        Field("validationDate", "ValidationDate", DATE, required=True),
        Field("suspensionDate", "SuspensionDate", DATE),
        Field("revocationDate", "RevocationDate", DATE),
        Field("reason", "Reason", TEXT, doc="reason for suspension or revocation"),
    ),
)

# Header fields that every MAA document starts with.
_REFERENCE = Field("reference", "UCR", ID, wco="016", doc="unique consignment reference")
_CASE = Field("caseReference", "CaseReferenceID", ID, doc="the sending administration's file")
_LANGUAGE = Field("language", "LanguageCode", LANGUAGE, required=True, doc="ISO 639-1")
_LEGAL_BASIS = Field("legalBasis", "LegalBasis", TEXT, doc="agreement article relied upon")
_PURPOSE = Field("purpose", "Purpose", TEXT, doc="what the information will be used for")
_CONTENT = (
    Field("persons", "Person", PERSON, many=True),
    Field("companies", "Company", COMPANY, many=True),
    Field("goods", "GoodsItem", GOODS_ITEM, many=True),
    Field("transport", "Transport", TRANSPORT),
    Field("offences", "Offence", OFFENCE, many=True),
    Field("seizures", "Seizure", SEIZURE, many=True),
    Field("financial", "FinancialItem", FINANCIAL, many=True),
)
ATTACHMENT = Complex(
    "SupportingDocumentType",
    (
        Field("format", "FormatCode", SHORT, required=True, doc="adapter name"),
        Field("filename", "FileName", TEXT, required=True),
        Field(
            "content",
            "Content",
            Simple("Base64Type", "str", "xs:base64Binary", (), {"type": "string"}),
        ),
    ),
    doc="A supporting document, validated by the adapter its format names.",
)
ATTACHMENTS = Field("attachments", "SupportingDocument", ATTACHMENT, many=True)

ROOTS: dict[str, tuple[str, Complex]] = {
    "maa.request": (
        "MaaRequest",
        Complex(
            "MaaRequestType",
            (
                _REFERENCE,
                _CASE,
                _LANGUAGE,
                Field("requestingAuthority", "RequestingAuthority", AUTHORITY, required=True),
                Field("requestedAuthority", "RequestedAuthority", AUTHORITY),
                Field("measure", "MeasureCode", MEASURE_REQUESTED, required=True),
                Field("subject", "Subject", TEXT, required=True, doc="object of the request"),
                Field("reason", "Reason", TEXT, required=True),
                Field("legalBasis", "LegalBasis", TEXT, required=True),
                Field("purpose", "Purpose", TEXT, required=True),
                Field("urgency", "UrgencyCode", URGENCY, required=True),
                Field("replyBy", "ReplyByDate", DATE),
                Field("summaryOfFacts", "SummaryOfFacts", LONG, required=True),
                *_CONTENT,
            ),
            doc="A request for assistance.",
        ),
    ),
    "maa.reply": (
        "MaaReply",
        Complex(
            "MaaReplyType",
            (
                _REFERENCE,
                _CASE,
                _LANGUAGE,
                Field("respondingAuthority", "RespondingAuthority", AUTHORITY, required=True),
                Field(
                    "inReplyTo", "InReplyToID", ID, required=True, doc="message id of the request"
                ),
                _LEGAL_BASIS,
                _PURPOSE,
                Field("findings", "Findings", LONG, required=True),
                *_CONTENT,
            ),
            doc="The reply to a request; may carry supporting documents.",
        ),
    ),
    "maa.spontaneous": (
        "MaaSpontaneous",
        Complex(
            "MaaSpontaneousType",
            (
                _REFERENCE,
                _CASE,
                _LANGUAGE,
                Field("sendingAuthority", "SendingAuthority", AUTHORITY, required=True),
                Field("subject", "Subject", TEXT, required=True),
                Field("legalBasis", "LegalBasis", TEXT, required=True),
                _PURPOSE,
                Field("summaryOfFacts", "SummaryOfFacts", LONG, required=True),
                *_CONTENT,
            ),
            doc="Information sent without a request; may carry supporting documents.",
        ),
    ),
    "maa.refusal": (
        "MaaRefusal",
        Complex(
            "MaaRefusalType",
            (
                _REFERENCE,
                _CASE,
                _LANGUAGE,
                Field("respondingAuthority", "RespondingAuthority", AUTHORITY, required=True),
                Field("inReplyTo", "InReplyToID", ID, required=True),
                Field("decision", "DecisionCode", DECISION, required=True),
                Field("reasons", "Reason", REFUSAL_REASON_ITEM, required=True, many=True),
                Field("postponedUntil", "PostponedUntilDate", DATE),
            ),
            doc="A refusal or postponement of assistance, with reasons.",
        ),
    ),
    "mra.aeo-status": (
        "AeoStatusList",
        Complex(
            "AeoStatusListType",
            (
                Field("listKind", "ListKindCode", LIST_KIND, required=True),
                Field("listDate", "ListDate", DATE, required=True),
                Field("issuingAdministration", "IssuingAdministrationCode", COUNTRY, required=True),
                Field("traders", "Trader", TRADER, required=True, many=True),
            ),
            doc="An AEO status list under a mutual recognition arrangement.",
        ),
    ),
}
TYPE_BY_ROOT = {f"{{{NS}}}{tag}": mtype for mtype, (tag, _) in ROOTS.items()}


def root_spec(message_type: str) -> Complex:
    """The complex type of a message type's body (KeyError if unknown)."""
    return ROOTS[message_type][1]


# -- schema generation ---------------------------------------------------------------------


def _walk(spec: Complex, seen: dict[str, Simple | Complex]) -> None:
    for f in spec.fields:
        if f.type.name not in seen:
            seen[f.type.name] = f.type
            if isinstance(f.type, Complex):
                _walk(f.type, seen)


def _all_types(message_types: list[str]) -> list[Simple | Complex]:
    seen: dict[str, Simple | Complex] = {}
    for mtype in message_types:
        spec = root_spec(mtype)
        seen[spec.name] = spec
        _walk(spec, seen)
        if mtype in TYPES_WITH_ATTACHMENTS:
            seen[ATTACHMENT.name] = ATTACHMENT
            _walk(ATTACHMENT, seen)
    return sorted(seen.values(), key=lambda t: t.name)


def _xsd_doc(text: str, wco: str | None = None, indent: str = "") -> list[str]:
    parts = []
    if wco:
        parts.append(f"WCO data element {wco}.")
    if text:
        parts.append(text)
    if not parts:
        return []
    return [
        f"{indent}<xs:annotation><xs:documentation>{escape(' '.join(parts))}</xs:documentation>"
        "</xs:annotation>"
    ]


def xsd_text() -> str:
    """The canonical MAA XML schema (XSD 1.0) as text."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- Generated from adapters/_maa_spec.py by `python -m adapters._maa_spec`:"
        " do not edit. -->",
        f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:maa="{NS}"',
        f'           targetNamespace="{NS}" elementFormDefault="qualified" version="1.0">',
        "  <xs:annotation><xs:documentation>Canonical MAA exchange payloads of maa-gateway. Element"
        " names follow the WCO Data Model where it has one; the WCO data element id is noted on"
        " each such element.</xs:documentation></xs:annotation>",
    ]
    for mtype, (tag, spec) in ROOTS.items():
        out.append(f'  <xs:element name="{tag}" type="maa:{spec.name}">')
        out += _xsd_doc(f"Message type {mtype}.", indent="    ")
        out.append("  </xs:element>")
    for t in _all_types(list(ROOTS)):
        if isinstance(t, Simple):
            out.append(f'  <xs:simpleType name="{t.name}">')
            out.append(f'    <xs:restriction base="{t.base}">')
            out += [f"      <xs:{facet} value={quoteattr(value)}/>" for facet, value in t.facets]
            out.append("    </xs:restriction>")
            out.append("  </xs:simpleType>")
            continue
        out.append(f'  <xs:complexType name="{t.name}">')
        out += _xsd_doc(t.doc, indent="    ")
        out.append("    <xs:sequence>")
        fields = list(t.fields)
        if t.name in {root_spec(m).name for m in TYPES_WITH_ATTACHMENTS}:
            fields.append(ATTACHMENTS)
        for f in fields:
            occurs = "" if f.required else ' minOccurs="0"'
            if f.many:
                occurs += ' maxOccurs="unbounded"'
            line = f'      <xs:element name="{f.tag}" type="maa:{f.type.name}"{occurs}'
            doc = _xsd_doc(f.doc, f.wco, indent="        ")
            out += [line + ">", *doc, "      </xs:element>"] if doc else [line + "/>"]
        out.append("    </xs:sequence>")
        out.append("  </xs:complexType>")
    out.append("</xs:schema>")
    return "\n".join(out) + "\n"


def _json_type(t: Simple | Complex) -> dict[str, Any]:
    if isinstance(t, Simple):
        return dict(t.json)
    props: dict[str, Any] = {}
    for f in t.fields:
        ref: dict[str, Any] = {"$ref": f"#/$defs/{f.type.name}"}
        if f.doc or f.wco:
            ref["description"] = " ".join(
                p for p in (f"WCO {f.wco}, XML {f.tag}." if f.wco else f"XML {f.tag}.", f.doc) if p
            )
        props[f.key] = {"type": "array", "minItems": 1, "items": ref} if f.many else ref
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    required = [f.key for f in t.fields if f.required]
    if required:
        schema["required"] = required
    if t.doc:
        schema["description"] = t.doc
    return schema


def json_schema(message_types: list[str], schema_id: str, envelope: bool) -> dict[str, Any]:
    """A JSON Schema (2020-12) for the bodies of ``message_types``.

    With ``envelope`` the document carries ``messageType`` (and ``attachments`` where
    allowed) beside the body keys, as national-json does.
    """
    defs: dict[str, Any] = {t.name: _json_type(t) for t in _all_types(message_types)}
    branches = []
    for mtype in message_types:
        root = defs[root_spec(mtype).name]
        root["properties"] = {"messageType": {"const": mtype}, **root["properties"]}
        if envelope:
            root.setdefault("required", []).insert(0, "messageType")
        if mtype in TYPES_WITH_ATTACHMENTS:
            root["properties"]["attachments"] = {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": f"#/$defs/{ATTACHMENT.name}"},
            }
        branches.append(
            {
                "if": {"properties": {"messageType": {"const": mtype}}},
                "then": {"$ref": f"#/$defs/{root_spec(mtype).name}"},
            }
        )
    if ATTACHMENT.name in defs:
        defs[ATTACHMENT.name]["required"] = ["format", "filename", "content"]
        defs[ATTACHMENT.name]["properties"]["content"] = {
            "type": "string",
            "contentEncoding": "base64",
            "description": "The document's bytes, base64.",
        }
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
    }
    if len(message_types) == 1:
        schema["$ref"] = f"#/$defs/{root_spec(message_types[0]).name}"
    else:
        schema.update(
            type="object",
            required=["messageType"],
            properties={"messageType": {"enum": message_types}},
            allOf=branches,
        )
    schema["$defs"] = defs
    return schema


GENERATED: dict[str, Any] = {
    "maa.xsd": xsd_text,
    "national-json.schema.json": lambda: json_schema(
        list(ROOTS), "urn:maagw:national-json:1", True
    ),
    "aeo-mra.schema.json": lambda: json_schema(
        ["mra.aeo-status"], "urn:maagw:aeo-mra-json:1", False
    ),
}


def render(name: str) -> str:
    """The text of one generated schema file."""
    value = GENERATED[name]()
    return (
        value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    for filename in GENERATED:
        (SCHEMA_DIR / filename).write_text(render(filename), encoding="utf-8")
