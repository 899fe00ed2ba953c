"""``maa-xml``: the gateway's canonical MAA exchange payload.

XML in namespace ``urn:maagw:maa:1``, validated with lxml against the shipped
XSD 1.0 ``schemas/maa.xsd`` (compiled once per process). One root element per
message type: ``MaaRequest``, ``MaaReply``, ``MaaSpontaneous``, ``MaaRefusal``,
``AeoStatusList``. Supporting documents travel as ``SupportingDocument`` elements
(format = adapter name, file name, base64 content) and are checked by their own
adapter on decode. The body keys (``purpose``, ``legalBasis`` …) are those of
``adapters._maa_spec`` and the same as ``national-json``'s.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

from lxml import etree

from adapters import _maa_spec as spec
from adapters._support import (
    check_attachments,
    check_message_type,
    check_semantics,
    lxml_schema_error,
    maa_categories,
    parse_xml,
)
from adapters.base import Attachment, Document
from gateway.errors import DecodeError, EncodeError, ErrorCode

_NAMESPACES = {"maa": spec.NS}
_ATTACHMENT_QNAME = spec.ATTACHMENTS.qname
_CONTENT_QNAME = spec.ATTACHMENT.by_key["content"].qname


@cache
def schema() -> etree.XMLSchema:
    """The compiled canonical schema (built on first use, then shared)."""
    return etree.XMLSchema(etree.parse(str(spec.SCHEMA_DIR / "maa.xsd")))


class MaaXmlAdapter:
    """The canonical MAA XML form."""

    name = "maa-xml"
    media_type = "application/xml"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        schema()

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse, validate and read an MAA XML document."""
        root = parse_xml(data, self.name)
        found = spec.TYPE_BY_ROOT.get(root.tag)
        location = f"line {root.sourceline}"
        if found is None:
            raise DecodeError(
                f"{root.tag} is not an MAA document root",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location=location,
                format=self.name,
            )
        check_message_type(found, message_type, self.name, location)
        validator = schema()
        if not validator.validate(root):
            raise lxml_schema_error(validator, self.name, encoding=False, namespaces=_NAMESPACES)
        body, attachments, lines = _read_root(root, spec.root_spec(found))
        check_semantics(found, body, self.name, encoding=False)
        check_attachments(attachments, self.name, lines)
        return Document(found, body, tuple(attachments))

    def encode(self, document: Document) -> bytes:
        """Write and validate ``document`` as MAA XML."""
        if document.message_type not in spec.ROOTS:
            raise EncodeError(
                f"{document.message_type!r} is not an MAA message type",
                code=ErrorCode.TRANSLATE_ENCODE,
                location="$",
                format=self.name,
            )
        tag, root_spec = spec.ROOTS[document.message_type]
        check_semantics(document.message_type, document.body, self.name, encoding=True)
        root = etree.Element(f"{{{spec.NS}}}{tag}", nsmap={None: spec.NS})
        _write(root, root_spec, document.body, "$", self.name)
        if document.attachments:
            if document.message_type not in spec.TYPES_WITH_ATTACHMENTS:
                raise EncodeError(
                    f"a {document.message_type} cannot carry supporting documents",
                    code=ErrorCode.TRANSLATE_ENCODE,
                    location="$.attachments",
                    format=self.name,
                )
            for i, attachment in enumerate(document.attachments):
                body = {"format": attachment.format, "filename": attachment.filename}
                element = etree.SubElement(root, _ATTACHMENT_QNAME)
                _write(element, spec.ATTACHMENT, body, f"$.attachments[{i}]", self.name)
                etree.SubElement(element, _CONTENT_QNAME).text = base64.b64encode(
                    attachment.content
                ).decode("ascii")
        validator = schema()
        if not validator.validate(root):
            error = lxml_schema_error(validator, self.name, encoding=True, namespaces=_NAMESPACES)
            error.context["location"] = _json_path(root, root_spec, error.context["location"])
            raise error
        return bytes(
            etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
        )

    def categories(self, document: Document) -> frozenset[str]:
        """Data categories present in the content and the supporting documents."""
        return maa_categories(document)


def _read_root(
    root: etree._Element, root_spec: spec.Complex
) -> tuple[dict[str, Any], list[Attachment], list[str]]:
    attachments: list[Attachment] = []
    lines: list[str] = []
    for child in root.iterchildren(_ATTACHMENT_QNAME):
        values = _read(child, spec.ATTACHMENT)
        # the schema checked xs:base64Binary; only whitespace needs removing
        content = base64.b64decode("".join(values.get("content", "").split()))
        attachments.append(Attachment(values["format"], values["filename"], content))
        lines.append(f"line {child.sourceline}")
    return _read(root, root_spec), attachments, lines


def _read(element: etree._Element, complex_type: spec.Complex) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_qname = complex_type.by_qname
    for child in element:
        field = by_qname.get(child.tag)
        if field is None:  # a comment, a processing instruction or a SupportingDocument
            continue
        if isinstance(field.type, spec.Complex):
            value: Any = _read(child, field.type)
        else:
            value = field.type.from_text(child.text or "")
        if field.many:
            out.setdefault(field.key, []).append(value)
        else:
            out[field.key] = value
    return out


def _write(
    parent: etree._Element, complex_type: spec.Complex, obj: Any, path: str, fmt: str
) -> None:
    if not isinstance(obj, dict):
        raise EncodeError(
            f"expected an object, got {type(obj).__name__}",
            code=ErrorCode.TRANSLATE_ENCODE,
            location=path,
            format=fmt,
        )
    by_key = complex_type.by_key
    for key in obj:
        if key not in by_key:
            raise EncodeError(
                f"{key!r} has no place in {complex_type.name}",
                code=ErrorCode.TRANSLATE_ENCODE,
                location=f"{path}.{key}",
                format=fmt,
            )
    # paths are built only where needed (a nested object, an error): this runs per field
    for field in complex_type.fields:
        value = obj.get(field.key)
        if value is None:
            continue
        if field.many and not isinstance(value, list):
            raise EncodeError(
                "expected a list",
                code=ErrorCode.TRANSLATE_ENCODE,
                location=f"{path}.{field.key}",
                format=fmt,
            )
        kind, qname = field.type, field.qname
        for i, item in enumerate(value) if field.many else ((None, value),):
            element = etree.SubElement(parent, qname)
            if isinstance(kind, spec.Complex):
                _write(element, kind, item, _where(path, field.key, i), fmt)
                continue
            try:
                element.text = kind.to_text(item)
            except (TypeError, ValueError) as exc:
                raise EncodeError(
                    f"cannot be written as XML text: {exc}",
                    code=ErrorCode.TRANSLATE_ENCODE,
                    location=_where(path, field.key, i),
                    format=fmt,
                ) from exc


def _where(path: str, key: str, index: int | None) -> str:
    return f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"


def _json_path(root: etree._Element, root_spec: spec.Complex, xpath: str) -> str:
    """The body's JSON path of the element an lxml validation error points at."""
    found = root.xpath(xpath) if xpath else []
    if not found:
        return "$"
    steps = []
    element = found[0]
    while element is not root and element is not None:
        steps.append(element)
        element = element.getparent()
    path, complex_type = "$", root_spec
    for element in reversed(steps):
        if element.tag == _ATTACHMENT_QNAME and complex_type is root_spec:
            index = list(root.iterchildren(_ATTACHMENT_QNAME)).index(element)
            path, complex_type = f"{path}.attachments[{index}]", spec.ATTACHMENT
            continue
        field = complex_type.by_qname.get(element.tag)
        if field is None:
            break
        path += f".{field.key}"
        if field.many:
            parent = element.getparent()
            path += f"[{list(parent.iterchildren(element.tag)).index(element)}]"
        if not isinstance(field.type, spec.Complex):
            break
        complex_type = field.type
    return path
