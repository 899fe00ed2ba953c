"""Tests for adapters/_support.py: what the adapters share."""

from __future__ import annotations

import pytest

import adapters
from adapters._support import json_path, load_json, parse_xml, semantic_problem, short
from gateway.errors import DecodeError


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], "$"),
        (["persons", 0, "birthDate"], "$.persons[0].birthDate"),
        (["n1:CC015C", "Consignment"], "$['n1:CC015C'].Consignment"),
        (["it's", 2], "$['it\\'s'][2]"),
    ],
)
def test_json_path(parts: list[str | int], expected: str) -> None:
    """Instance paths become readable JSON paths."""
    assert json_path(parts) == expected


def test_short_reason_is_one_bounded_line() -> None:
    """A long, multi-line reason is folded to one line of bounded length."""
    reason = short("a\nb  " + "x" * 1000)
    assert "\n" not in reason
    assert len(reason) <= 300
    assert reason.startswith("a b ")


def test_billion_laughs_refused_without_expansion() -> None:
    """Nested entity definitions are refused as a DOCTYPE, never expanded."""
    lol = (
        b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {c} "{("&" + p + ";") * 10}">'.encode()
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + b"]><l>&i;</l>"
    )
    with pytest.raises(DecodeError) as info:
        parse_xml(lol, "test")
    assert info.value.code in {"TRANSLATE_UNSAFE", "TRANSLATE_DECODE"}


@pytest.mark.parametrize(
    ("message_type", "body", "problem"),
    [
        ("mra.aeo-status", {"traders": [{"status": "suspended"}]}, "$.traders[0]"),
        ("mra.aeo-status", {"traders": [{"status": "revoked", "revocationDate": "x"}]}, None),
        ("maa.refusal", {"decision": "postponed"}, "$"),
        ("maa.refusal", {"decision": "refused"}, None),
    ],
)
def test_semantic_rules(message_type: str, body: dict[str, object], problem: str | None) -> None:
    """The cross-field rules flag exactly the documents that break them."""
    found = semantic_problem(message_type, body)
    assert (found[0] if found else None) == problem


@pytest.mark.parametrize("name", adapters.available())
def test_every_adapter_preloads(name: str) -> None:
    """Every installed adapter of this project can compile its schemas at start."""
    preload = getattr(adapters.get(name), "preload", None)
    assert callable(preload)
    preload()


@pytest.mark.parametrize(
    "data",
    [
        b'{"purpose": "smuggled", "purpose": "Establishing the customs debt"}',
        b'{"outer": {"a": 1, "a": 2}}',
    ],
)
def test_json_with_a_duplicate_key_is_refused(data: bytes) -> None:
    """A duplicate key could be read differently by another parser: refused, not last-one-wins."""
    with pytest.raises(DecodeError) as exc:
        load_json(data, "national-json")
    assert exc.value.code == "TRANSLATE_DECODE"
    assert "duplicate key" in exc.value.reason


def test_json_without_duplicates_still_loads() -> None:
    """Nested objects and lists load as plain dicts and lists."""
    assert load_json(b'{"a": {"b": [1, {"c": null}]}}', "national-json") == {
        "a": {"b": [1, {"c": None}]}
    }
