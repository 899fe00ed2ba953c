"""Build and parse the exchange envelope and the receipt list.

One module owns the wire format (``gateway/xml/schemas/envelope.xsd``, namespace
``urn:maagw:envelope:1``). Builders return an unsigned lxml root for
``gateway.xml.signature`` to sign; parsers take a root that was verified and
schema-validate it, so the data the pipeline reads is the data that was signed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from typing import Literal

from lxml import etree

from gateway.errors import AuthError, EnvelopeError, ErrorCode, SignatureError

#: how long (sender, message id) is remembered; envelopes older than this are SIG_STALE
DUPLICATE_RETENTION_SECONDS = 7 * 24 * 3600


#: how far in the future an envelope's creation time may lie (clock skew)
FUTURE_SKEW_SECONDS = 600


NS = "urn:maagw:envelope:1"


DS_NS = "http://www.w3.org/2000/09/xmldsig#"


_E = f"{{{NS}}}"


ReceiptStatus = Literal["accepted", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class Header:
    """The envelope header: who sends what to whom under which agreement."""

    message_id: str
    sender: str
    receiver: str
    agreement: str
    message_type: str
    created: datetime
    payload_format: str
    categories: tuple[str, ...] = ()
    correlation_id: str | None = None
    conversation_id: str | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope: its header and the payload bytes in ``header.payload_format``."""

    header: Header
    payload: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class ReceiptEntry:
    """What the receiver says about one received envelope."""

    message_id: str
    digest: str
    status: ReceiptStatus
    code: str | None = None
    reason: str | None = None
    original_receipt: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A parsed receipt list."""

    receipt_id: str
    sender: str
    receiver: str
    created: datetime
    entries: tuple[ReceiptEntry, ...] = field(default=())


@cache
def schema() -> etree.XMLSchema:
    """The envelope/receipt schema, compiled once per process."""
    text = files("gateway.xml").joinpath("schemas/envelope.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(text))


def validate(root: etree._Element) -> None:
    """Raise ``EnvelopeError(SCHEMA_INVALID)`` naming the line of the first error."""
    xsd = schema()
    if not xsd.validate(root):
        err = xsd.error_log[0]
        raise EnvelopeError(f"line {err.line}: {err.message}", code=ErrorCode.SCHEMA_INVALID)


def new_id() -> str:
    """A fresh message or receipt id."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_envelope(header: Header, payload: bytes, media_type: str) -> etree._Element:
    """An unsigned envelope root; XML payloads are embedded, others base64-encoded."""
    root = etree.Element(f"{_E}Envelope", nsmap={None: NS}, version="1")
    head = etree.SubElement(root, f"{_E}Header")
    _sub(head, "MessageId", header.message_id)
    _sub(head, "CorrelationId", header.correlation_id)
    _sub(head, "ConversationId", header.conversation_id)
    _sub(head, "Sender", header.sender)
    _sub(head, "Receiver", header.receiver)
    _sub(head, "Agreement", header.agreement)
    _sub(head, "MessageType", header.message_type)
    _sub(head, "Created", format_time(header.created))
    _sub(head, "Reference", header.reference)
    cats = etree.SubElement(head, f"{_E}DataCategories")
    for category in header.categories:
        _sub(cats, "Category", category)
    _sub(head, "PayloadFormat", header.payload_format)
    body = etree.SubElement(root, f"{_E}Payload", mediaType=media_type)
    if _is_xml(media_type):
        body.set("encoding", "xml")
        body.append(_parse_embedded(payload))
    else:
        body.set("encoding", "base64")
        body.text = base64.b64encode(payload).decode("ascii")
    return root


def parse_envelope(root: etree._Element) -> Envelope:
    """Schema-validate a (verified) envelope root and read it."""
    if root.tag != f"{_E}Envelope":
        raise EnvelopeError(
            f"root element is {root.tag}, not an envelope", code=ErrorCode.SCHEMA_INVALID
        )
    validate(root)
    head = root.find(f"{_E}Header")
    body = root.find(f"{_E}Payload")
    assert head is not None and body is not None  # guaranteed by the schema
    header = Header(
        message_id=_text(head, "MessageId"),
        correlation_id=_opt(head, "CorrelationId"),
        conversation_id=_opt(head, "ConversationId"),
        sender=_text(head, "Sender"),
        receiver=_text(head, "Receiver"),
        agreement=_text(head, "Agreement"),
        message_type=_text(head, "MessageType"),
        created=parse_time(_text(head, "Created")),
        reference=_opt(head, "Reference"),
        categories=tuple(
            "".join(c.itertext()).strip() for c in head.iterfind(f"{_E}DataCategories/{_E}Category")
        ),
        payload_format=_text(head, "PayloadFormat"),
    )
    media_type = body.get("mediaType", "")
    if body.get("encoding") == "xml":
        children = [c for c in body if isinstance(c.tag, str)]
        if len(children) != 1:
            raise EnvelopeError(
                "an XML payload must be exactly one element", code=ErrorCode.SCHEMA_INVALID
            )
        # a copy without the envelope's namespace declarations that are in scope but unused
        element = copy.deepcopy(children[0])
        etree.cleanup_namespaces(element)
        # Comments and PIs are outside what exc-c14n signs; removing them joins the text
        # around them, so an adapter reading ``.text`` reads the whole signed text.
        etree.strip_tags(element, etree.Comment, etree.ProcessingInstruction)
        payload = etree.tostring(element, encoding="UTF-8", xml_declaration=False)
    else:
        try:
            payload = base64.b64decode("".join(body.itertext()), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeError(
                f"payload is not base64: {exc}", code=ErrorCode.SCHEMA_INVALID
            ) from None
    return Envelope(header=header, payload=payload, media_type=media_type)


def build_receipt(
    sender: str,
    receiver: str,
    entries: Sequence[ReceiptEntry],
    *,
    receipt_id: str | None = None,
    created: datetime | None = None,
) -> etree._Element:
    """An unsigned receipt list answering one or more envelopes."""
    if not entries:
        raise ValueError("a receipt needs at least one entry")
    root = etree.Element(f"{_E}Receipt", nsmap={None: NS}, version="1")
    _sub(root, "ReceiptId", receipt_id or new_id())
    _sub(root, "Sender", sender)
    _sub(root, "Receiver", receiver)
    _sub(root, "Created", format_time(created or utcnow()))
    for entry in entries:
        el = etree.SubElement(root, f"{_E}Entry")
        _sub(el, "MessageId", entry.message_id)
        _sub(el, "Digest", entry.digest)
        _sub(el, "Status", entry.status)
        _sub(el, "Code", entry.code)
        _sub(el, "Reason", entry.reason[:1024] if entry.reason else None)
        _sub(el, "OriginalReceipt", entry.original_receipt)
    return root


def parse_receipt(root: etree._Element) -> Receipt:
    """Schema-validate a (verified) receipt root and read it."""
    if root.tag != f"{_E}Receipt":
        raise EnvelopeError(
            f"root element is {root.tag}, not a receipt", code=ErrorCode.SCHEMA_INVALID
        )
    validate(root)
    entries = tuple(
        ReceiptEntry(
            message_id=_text(el, "MessageId"),
            digest=_text(el, "Digest"),
            status=_text(el, "Status"),  # type: ignore[arg-type]  # enumerated by the schema
            code=_opt(el, "Code"),
            reason=_opt(el, "Reason"),
            original_receipt=_opt(el, "OriginalReceipt"),
        )
        for el in root.iterfind(f"{_E}Entry")
    )
    return Receipt(
        receipt_id=_text(root, "ReceiptId"),
        sender=_text(root, "Sender"),
        receiver=_text(root, "Receiver"),
        created=parse_time(_text(root, "Created")),
        entries=entries,
    )


def parse_time(text: str) -> datetime:
    """Read an xs:dateTime in UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _is_xml(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return base in {"application/xml", "text/xml"} or base.endswith("+xml")


def _parse_embedded(payload: bytes) -> etree._Element:
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
        huge_tree=False,
    )
    try:
        element = etree.fromstring(payload, parser)
    except etree.XMLSyntaxError as exc:
        raise EnvelopeError(
            f"payload is not well-formed XML: {exc}", code=ErrorCode.SCHEMA_INVALID
        ) from None
    if element.getroottree().docinfo.doctype:
        raise EnvelopeError("payload has a DOCTYPE", code=ErrorCode.XML_UNSAFE)
    return element


def _sub(parent: etree._Element, name: str, value: str | None) -> None:
    if value is not None:
        etree.SubElement(parent, f"{_E}{name}").text = value


def _text(parent: etree._Element, name: str) -> str:
    el = parent.find(f"{_E}{name}")
    if el is None:
        raise EnvelopeError(f"missing {name}", code=ErrorCode.SCHEMA_INVALID)
    # itertext joins the text around comments, so a comment cannot truncate a value
    return "".join(el.itertext()).strip()


def _opt(parent: etree._Element, name: str) -> str | None:
    return _text(parent, name) if parent.find(f"{_E}{name}") is not None else None


#: the reason a duplicate receipt entry gives
DUPLICATE_REASON = "this message id was received before"


def check_header(head: Header, *, sender: str, receiver: str) -> None:
    """What a receiver checks of a verified envelope's header: from the partner whose TLS
    identity sent it (``sender``), to this gateway (``receiver``), inside the replay window."""
    if head.sender != sender:
        raise AuthError(
            f"envelope sender {head.sender} is not the authenticated partner {sender}",
            code=ErrorCode.AUTH_SENDER_MISMATCH,
        )
    if head.receiver != receiver:
        raise EnvelopeError(
            f"envelope is addressed to {head.receiver}, not to {receiver}",
            code=ErrorCode.ENVELOPE_WRONG_RECEIVER,
        )
    now = datetime.now(UTC)
    if head.created < now - timedelta(seconds=DUPLICATE_RETENTION_SECONDS):
        raise SignatureError("envelope is older than the replay window", code=ErrorCode.SIG_STALE)
    if head.created > now + timedelta(seconds=FUTURE_SKEW_SECONDS):
        raise SignatureError("envelope is created in the future", code=ErrorCode.SIG_STALE)


def peek_created(root: etree._Element) -> datetime | None:
    """The envelope's creation time if it is readable and inside the replay window."""
    el = root.find(f"{_E}Header/{_E}Created")
    if el is None:
        return None
    try:
        created = parse_time("".join(el.itertext()).strip())
    except ValueError:
        return None
    now = datetime.now(UTC)
    earliest = now - timedelta(seconds=DUPLICATE_RETENTION_SECONDS)
    latest = now + timedelta(seconds=FUTURE_SKEW_SECONDS)
    return created if earliest <= created <= latest else None


def peek_message_id(root: etree._Element) -> str | None:
    """The message id as written, for the rejection receipt of an unverifiable envelope."""
    el = root.find(f"{_E}Header/{_E}MessageId")
    if el is None:
        return None
    text = "".join(el.itertext()).strip()
    return text[:128] if text and len(text) <= 128 and text.isprintable() else None
