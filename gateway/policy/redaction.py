"""Outbound redactions: remove the paths an agreement keeps at home from a document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.config.agreement import parse_path


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _copy(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_copy(value) for value in node]
    return node


def _remove(node: Any, segments: tuple[str, ...]) -> None:
    head, rest = segments[0], segments[1:]
    if head == "*":
        children = (
            node if isinstance(node, list) else node.values() if isinstance(node, dict) else ()
        )
        for child in children:
            _remove(child, rest)
    elif isinstance(node, dict) and head in node:
        if rest:
            _remove(node[head], rest)
        else:
            del node[head]


def apply_redactions(body: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``body`` without the values at ``paths``; ``body`` is untouched.

    A path that is absent is not an error. See ``parse_path`` for the syntax.
    """
    result: dict[str, Any] = _copy(body)
    for path in paths:
        _remove(result, parse_path(path))
    return result
