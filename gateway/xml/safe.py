"""Safe XML parsing for everything that arrives from outside.

One parser configuration for the whole gateway: no DTD (a document with any
``DOCTYPE`` is refused), no entity expansion, no network access, no
``huge_tree``, a size limit checked before parsing and a nesting-depth limit
checked right after. Comments and processing instructions are kept in the tree
because they are part of what the signer signed under canonicalisations "with
comments"; code that reads text must therefore use :func:`text_of`, which returns
the whole text of an element and ignores comments, so that ``<a>12<!--x-->34</a>``
reads as ``1234`` and not as ``12``.

Refusals are :class:`~gateway.errors.EnvelopeError` with code ``SIZE_LIMIT``
(too many bytes), ``XML_UNSAFE`` (DOCTYPE, entities, too deep) or
``SCHEMA_INVALID`` (not well-formed XML).
"""

from __future__ import annotations

import functools
import threading

from lxml import etree

from gateway.errors import EnvelopeError, ErrorCode

DEFAULT_MAX_BYTES = 10 * 1024 * 1024


DEFAULT_MAX_DEPTH = 64


# libxml2 errors that mean "this input attacks the parser", not "this is not XML".
_UNSAFE_ERRORS = frozenset(
    {
        etree.ErrorTypes.ERR_RESOURCE_LIMIT,  # excessive depth, huge text nodes …
        etree.ErrorTypes.ERR_ENTITY_LOOP,
        etree.ErrorTypes.ERR_UNDECLARED_ENTITY,
        etree.ErrorTypes.WAR_UNDECLARED_ENTITY,
        etree.ErrorTypes.ERR_EXT_ENTITY_STANDALONE,
        etree.ErrorTypes.ERR_ENTITY_PE_INTERNAL,
    }
)


_local = threading.local()


_string_value = etree.XPath("string()")


def _parser() -> etree.XMLParser:
    """Return this thread's parser (lxml parsers must not be shared across threads)."""
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            remove_blank_text=False,
            collect_ids=False,
        )
        _local.parser = parser
    return parser


@functools.lru_cache(maxsize=8)
def _too_deep(max_depth: int) -> etree.XPath:
    """An XPath that is true when any element sits deeper than ``max_depth``."""
    return etree.XPath("boolean(" + "/*" * (max_depth + 1) + ")")


def parse(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> etree._Element:
    """Parse untrusted XML bytes into the document's root element.

    Raises:
        EnvelopeError: ``SIZE_LIMIT`` before parsing when ``data`` is larger than
            ``max_bytes``; ``XML_UNSAFE`` for a DOCTYPE, entities or nesting deeper
            than ``max_depth``; ``SCHEMA_INVALID`` for XML that is not well-formed.
    """
    if len(data) > max_bytes:
        raise EnvelopeError(
            f"document of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            code=ErrorCode.SIZE_LIMIT,
        )
    # Cheap early refusal for the common (ASCII-compatible) encodings; the docinfo
    # check below catches a DOCTYPE in any other encoding.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise EnvelopeError("a DOCTYPE declaration is not allowed", code=ErrorCode.XML_UNSAFE)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        last = exc.error_log.last_error if exc.error_log else None
        if last is not None and last.type in _UNSAFE_ERRORS:
            raise EnvelopeError(f"unsafe XML: {last.message}", code=ErrorCode.XML_UNSAFE) from exc
        raise EnvelopeError(f"not well-formed XML: {exc}", code=ErrorCode.SCHEMA_INVALID) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise EnvelopeError("a DOCTYPE declaration is not allowed", code=ErrorCode.XML_UNSAFE)
    if _too_deep(max_depth)(root):
        raise EnvelopeError(
            f"elements nested deeper than {max_depth} levels", code=ErrorCode.XML_UNSAFE
        )
    return root


def text_of(element: etree._Element) -> str:
    """Return the whole text content of ``element``, ignoring comments and PIs."""
    return str(_string_value(element))
