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

__all__ = ["GROUP", "Adapter", "Attachment", "Document", "available", "get"]

#: the entry-point group a third-party adapter registers under
GROUP = "maagw.adapters"


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
