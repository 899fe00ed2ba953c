"""``national-json``: the national back office's JSON form of the MAA documents.

One JSON object: ``messageType`` (``maa.request`` … ``mra.aeo-status``), the body
keys of ``adapters._maa_spec`` beside it, and for replies and spontaneous
information an optional ``attachments`` list of ``{"format", "filename",
"content"}`` (content in base64). Validated with jsonschema against the shipped
``schemas/national-json.schema.json`` (one compiled validator per message type,
built once per process).

Keys the policy engine reads: ``purpose`` and ``legalBasis`` (strings, required in
a request), ``measure``, ``urgency``, ``replyBy``, ``reference`` (the UCR).
"""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

from adapters import _maa_spec as spec
from adapters._support import (
    b64decode,
    check_attachments,
    check_message_type,
    check_semantics,
    json_schema_error,
    json_validator,
    load_json,
    maa_categories,
)
from adapters.base import Attachment, Document
from gateway.errors import DecodeError, EncodeError, ErrorCode

_ENVELOPE_KEYS = ("messageType", "attachments")


@cache
def _schema() -> dict[str, Any]:
    path = spec.SCHEMA_DIR / "national-json.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def validator(message_type: str) -> Any:
    """The compiled validator of one message type's JSON form."""
    schema = _schema()
    return json_validator(
        {
            "$schema": schema["$schema"],
            "$ref": f"#/$defs/{spec.root_spec(message_type).name}",
            "$defs": schema["$defs"],
        }
    )


class NationalJsonAdapter:
    """The national back office's JSON form of the MAA documents."""

    name = "national-json"
    media_type = "application/json"

    def preload(self) -> None:
        """Compile the schemas now (at start) rather than on the first message."""
        for message_type in spec.ROOTS:
            validator(message_type)

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse, validate and read a national-json document."""
        obj = load_json(data, self.name)
        if not isinstance(obj, dict):
            raise DecodeError(
                "a national-json document is a JSON object",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location="$",
                format=self.name,
            )
        found = obj.get("messageType")
        if found not in spec.ROOTS:
            raise DecodeError(
                f"messageType must be one of {', '.join(spec.ROOTS)}, not {found!r}",
                code=ErrorCode.TRANSLATE_SCHEMA,
                location="$.messageType",
                format=self.name,
            )
        check_message_type(found, message_type, self.name, "$.messageType")
        error = json_schema_error(validator(found), obj, self.name, encoding=False)
        if error is not None:
            raise error
        body = {key: value for key, value in obj.items() if key not in _ENVELOPE_KEYS}
        check_semantics(found, body, self.name, encoding=False)
        raw = obj.get("attachments", [])
        locations = [f"$.attachments[{i}]" for i in range(len(raw))]
        attachments = [
            Attachment(
                item["format"],
                item["filename"],
                b64decode(item["content"], self.name, f"{where}.content"),
            )
            for item, where in zip(raw, locations, strict=True)
        ]
        check_attachments(attachments, self.name, locations)
        return Document(found, body, tuple(attachments))

    def encode(self, document: Document) -> bytes:
        """Write and validate ``document`` as national-json."""
        if document.message_type not in spec.ROOTS:
            raise EncodeError(
                f"{document.message_type!r} is not an MAA message type",
                code=ErrorCode.TRANSLATE_ENCODE,
                location="$",
                format=self.name,
            )
        clash = next((key for key in _ENVELOPE_KEYS if key in document.body), None)
        if clash is not None:
            raise EncodeError(
                f"{clash!r} is not a body key",
                code=ErrorCode.TRANSLATE_ENCODE,
                location=f"$.{clash}",
                format=self.name,
            )
        obj: dict[str, Any] = {"messageType": document.message_type, **document.body}
        if document.attachments:
            obj["attachments"] = [attachment_json(a) for a in document.attachments]
        check_semantics(document.message_type, document.body, self.name, encoding=True)
        error = json_schema_error(validator(document.message_type), obj, self.name, encoding=True)
        if error is not None:
            raise error
        return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"

    def categories(self, document: Document) -> frozenset[str]:
        """Data categories present in the content and the supporting documents."""
        return maa_categories(document)


def attachment_json(attachment: Attachment) -> dict[str, str]:
    """An attachment in its JSON form."""
    return {
        "format": attachment.format,
        "filename": attachment.filename,
        "content": base64.b64encode(attachment.content).decode("ascii"),
    }
