"""Test helpers for the adapters: hypothesis strategies for valid MAA bodies.

Built from the same declaration as the schemas (``adapters._maa_spec``), so a new
field is generated as soon as it is declared. Moved out of ``adapters`` (it needs
hypothesis, which only the dev extra installs), so a shipped module never imports it.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from adapters import _maa_spec as spec
from adapters._support import semantic_problem
from adapters.base import Document

# Text that XML 1.0 can carry: no control characters (tab and newline aside),
# no surrogates, no non-characters such as U+FFFE.
_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Cn"), whitelist_characters="\t\n")


def _simple(simple: spec.Simple) -> st.SearchStrategy[Any]:
    if simple is spec.DATE:
        return st.dates().map(lambda d: d.isoformat())
    if simple.kind == "int":
        return st.integers(min_value=1, max_value=999_999)
    if simple.kind == "num":
        return st.one_of(
            st.integers(min_value=0, max_value=10**12),
            st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
        )
    if "enum" in simple.json:
        return st.sampled_from(simple.json["enum"])
    if "pattern" in simple.json:
        return st.from_regex(re.compile(simple.json["pattern"]), fullmatch=True)
    if simple.base == "xs:base64Binary":
        return st.just("")
    max_size = min(int(simple.json.get("maxLength", 40)), 40)
    return st.text(_CHARS, min_size=1, max_size=max_size)


def _complex(complex_type: spec.Complex, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in complex_type.fields:
        value: st.SearchStrategy[Any] = (
            _complex(field.type, depth + 1)
            if isinstance(field.type, spec.Complex)
            else _simple(field.type)
        )
        if field.many:
            value = st.lists(value, min_size=1, max_size=2 if depth else 3)
        (required if field.required else optional)[field.key] = value
    return st.fixed_dictionaries(required, optional=optional)


def _satisfy(message_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """Add what the cross-field rules need (dates of suspension, postponement)."""
    while (problem := semantic_problem(message_type, body)) is not None:
        location, _ = problem
        if message_type == "maa.refusal":
            body["postponedUntil"] = "2030-01-31"
            continue
        index = int(location.split("[")[1].rstrip("]"))
        trader = body["traders"][index]
        key = "suspensionDate" if trader["status"] == "suspended" else "revocationDate"
        trader[key] = "2030-01-31"
    return body


def bodies(message_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid bodies of one MAA message type (attachments aside)."""
    return _complex(spec.root_spec(message_type)).map(lambda b: _satisfy(message_type, b))


def documents(message_types: list[str] | None = None) -> st.SearchStrategy[Document]:
    """Valid MAA documents, without attachments."""
    types = message_types or list(spec.ROOTS)
    return st.sampled_from(types).flatmap(
        lambda mtype: bodies(mtype).map(lambda body: Document(mtype, body))
    )
