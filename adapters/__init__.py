"""Payload format adapters, found by name.

Adapters register under the entry-point group ``maagw.adapters`` (name = adapter
name, value = a class or factory taking no arguments), so a third party can add a
format by installing a package. The gateway core asks ``get(name)`` and never
imports a concrete adapter.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from adapters.base import Adapter, Attachment, Document
from gateway.errors import AdapterError, ErrorCode

__all__ = [
    "DEFAULT_EXCHANGE_FORMAT",
    "FORMAT_BY_SUFFIX",
    "GROUP",
    "Adapter",
    "Attachment",
    "Document",
    "available",
    "format_for_file",
    "get",
]

#: the entry-point group a third-party adapter registers under
GROUP = "maagw.adapters"

#: the exchange format an agreement uses when it names none, and the back office's inbound
#: format by default: the gateway's WCO-aligned MAA XML
DEFAULT_EXCHANGE_FORMAT = "maa-xml"

#: the adapter a message file is read with when the command line names none
FORMAT_BY_SUFFIX = {".json": "national-json", ".xml": "maa-xml", ".csv": "aeo-mra-csv"}


def format_for_file(name: str) -> str | None:
    """The adapter for a file by its suffix (``FORMAT_BY_SUFFIX``), or None."""
    dot = name.rfind(".")
    return FORMAT_BY_SUFFIX.get(name[dot:].lower()) if dot >= 0 else None


def available() -> list[str]:
    """Names of every installed adapter, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@cache
def get(name: str) -> Adapter:
    """Return the adapter registered as ``name`` (built once, then shared)."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise AdapterError(
            f"no adapter named {name!r} (installed: {', '.join(available()) or 'none'})",
            code=ErrorCode.TRANSLATE_UNKNOWN_FORMAT,
        )
    adapter = matches[0].load()()
    if not isinstance(adapter, Adapter):
        raise AdapterError(
            f"entry point {name!r} is not an adapter", code=ErrorCode.TRANSLATE_UNKNOWN_FORMAT
        )
    return adapter
