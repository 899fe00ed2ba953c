"""The adapter protocol: one payload format, translated to and from a ``Document``.

A ``Document`` is the format-neutral form of one message: its message type and a
JSON-like body (dicts, lists, strings, numbers, booleans). Every adapter of the
MAA documents decodes into the same body shape, so that translation is
``encode_b(decode_a(data))``. Redaction paths in agreements address this body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Document:
    """One message in format-neutral form."""

    message_type: str
    body: dict[str, Any]
    attachments: tuple[Attachment, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Attachment:
    """A supporting document carried by a reply or spontaneous information."""

    format: str
    filename: str
    content: bytes


@runtime_checkable
class Adapter(Protocol):
    """Translate one format to and from ``Document``, validating against its schema."""

    #: the adapter's registry name, e.g. ``national-json``
    name: str
    #: the media type of the encoded form, e.g. ``application/json``
    media_type: str

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse and validate ``data``; raise ``DecodeError`` saying where and what."""
        ...

    def encode(self, document: Document) -> bytes:
        """Write ``document`` in this format, validated; raise ``EncodeError``."""
        ...

    def categories(self, document: Document) -> frozenset[str]:
        """The data categories present in the content (goods, trader, personal …)."""
        ...
