"""Tests for gateway/policy/redaction.py: removing exactly the configured paths from a body."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.redaction import apply_redactions, parse_path

BODY: dict[str, Any] = {
    "case": "C-1",
    "persons": [
        {"name": "A", "birth_date": "1970-01-01", "ids": {"passport": "P1", "tax": "T1"}},
        {"name": "B"},
    ],
    "goods": {"hs": "8703", "value": 10},
    "meta": {"a": {"secret": 1, "keep": 2}, "b": {"secret": 3}},
}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([], BODY),
        (["case"], {k: v for k, v in BODY.items() if k != "case"}),
        (
            ["persons.*.birth_date"],
            {
                **BODY,
                "persons": [{"name": "A", "ids": {"passport": "P1", "tax": "T1"}}, {"name": "B"}],
            },
        ),
        (
            ["persons.*.ids.tax"],
            {
                **BODY,
                "persons": [
                    {"name": "A", "birth_date": "1970-01-01", "ids": {"passport": "P1"}},
                    {"name": "B"},
                ],
            },
        ),
        (["goods.value", "nowhere.at.all"], {**BODY, "goods": {"hs": "8703"}}),
        (["meta.*.secret"], {**BODY, "meta": {"a": {"keep": 2}, "b": {}}}),
        (["persons.name"], BODY),
        (["case.sub"], BODY),
    ],
)
def test_apply_redactions(paths: list[str], expected: dict[str, Any]) -> None:
    """Redactions remove exactly the addressed values and leave the input untouched."""
    before = copy.deepcopy(BODY)
    assert apply_redactions(BODY, paths) == expected
    assert before == BODY


@pytest.mark.parametrize("path", ["", "a..b", "a.*", ".a", "a.b*"])
def test_bad_redaction_paths(path: str) -> None:
    """A malformed redaction path is refused."""
    with pytest.raises(ValueError, match="bad redaction path"):
        parse_path(path)


KEYS = st.sampled_from(["a", "b", "c", "name", "birth_date"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)
PATTERNS = st.lists(
    st.lists(KEYS | st.just("*"), min_size=0, max_size=3).flatmap(
        lambda prefix: KEYS.map(lambda last: [*prefix, last])
    ),
    max_size=3,
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every node's concrete path (dict keys, list indices) and, for scalars, its value."""
    found: dict[tuple[Any, ...], Any] = {
        path: node if not isinstance(node, dict | list) else type(node)
    }
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        found.update(_nodes(child, (*path, key)))
    return found


def _matched(path: tuple[Any, ...], pattern: list[str]) -> bool:
    """Whether ``pattern`` addresses ``path`` or one of its ancestors."""
    if len(pattern) > len(path):
        return False
    return all(
        seg == "*" or (isinstance(part, str) and seg == part)
        for seg, part in zip(pattern, path, strict=False)
    )


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(KEYS, JSON, max_size=5), patterns=PATTERNS)
def test_redactions_remove_exactly_the_configured_paths(
    body: dict[str, Any], patterns: list[list[str]]
) -> None:
    """Every node under a configured path is gone, every other one intact, the input unchanged."""
    before = copy.deepcopy(body)
    result = apply_redactions(body, [".".join(p) for p in patterns])
    assert body == before
    original = _nodes(before)
    kept = {
        path: value
        for path, value in original.items()
        if not any(_matched(path, p) for p in patterns)
    }
    assert _nodes(result) == kept
