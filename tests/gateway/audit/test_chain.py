"""Tests for gateway/audit/chain.py: the canonical bytes of an entry and the hash chain over them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import (
    ENTRY_FIELDS,
    GENESIS,
    AuditEvent,
    canonical_entry,
    canonical_json,
    chain_hash,
)

# ------------------------------------------------------------------ canonical bytes

_text = st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=20))
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    seq=st.integers(1, 2**53 - 1),
    strings=st.lists(_text, min_size=15, max_size=15),
    details=st.dictionaries(st.text(max_size=8), _json_value, max_size=4),
)
def test_canonical_entry_is_sorted_compact_json(
    seq: int, strings: list[str | None], details: dict[str, Any]
) -> None:
    """The hand-written canonical form equals json.dumps of the entry object with sorted keys."""
    names = [f for f in ENTRY_FIELDS if f not in ("seq", "details")]
    obj: dict[str, Any] = dict(zip(names, strings, strict=True))
    obj["event"] = obj["event"] or "received"
    obj["gateway"] = obj["gateway"] or "XA"
    obj["time"] = obj["time"] or "2024-01-01T00:00:00.000000Z"
    obj["seq"] = seq
    obj["details"] = details
    row = [
        obj[c]
        for c in (
            "seq",
            "time",
            "gateway",
            "event",
            "direction",
            "partner",
            "agreement",
            "message_type",
            "message_id",
            "correlation_id",
            "envelope_digest",
            "receipt_digest",
            "outcome",
            "code",
            "reason",
            "actor",
        )
    ]
    expected = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_entry(*row, canonical_json(details)) == expected.encode()


@pytest.mark.parametrize(
    "details",
    [{"latency": 1.5}, {"big": 2**60}, {1: "x"}, {"b": b"bytes"}, {"nested": [{"f": 0.1}]}],
)
def test_details_refuse_values_tools_disagree_on(details: dict[Any, Any]) -> None:
    """Floats, huge integers, non-string keys and non-JSON values are refused at construction."""
    with pytest.raises(ValueError):
        AuditEvent("received", details=details)


def test_chain_hash_is_sha256_of_prev_hex_then_bytes() -> None:
    """The chain hash is SHA-256 over the previous hash's 64 hex digits followed by the entry."""
    import hashlib

    body = b'{"x":1}'
    assert chain_hash(GENESIS, body) == hashlib.sha256(GENESIS.encode() + body).hexdigest()
