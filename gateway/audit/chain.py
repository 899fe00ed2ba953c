"""The exchange log's records and their canonical bytes: what the hash chain covers.

An entry's canonical form is the JSON object of its seventeen fields (``ENTRY_FIELDS``)
serialised the RFC 8785 (JCS) way: keys sorted, no whitespace, UTF-8, strings with
only the mandatory escapes. ``details`` is restricted to strings, integers of at most
53 bits, booleans, null, lists and objects, so that every JCS implementation produces
the same bytes. The entry's hash is::

    hash = SHA-256( ascii(prev_hash) || canonical_entry )   # hex, lower case

with ``prev_hash`` the previous entry's hash as 64 hex digits (``GENESIS`` for entry 1).
A checkpoint signs ``checkpoint_bytes(...)``, also JCS JSON. docs/audit.md shows how to
recompute both with standard tools.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: prev_hash of entry 1
GENESIS = "0" * 64


#: the fields of an entry, in canonical (sorted) order
ENTRY_FIELDS: tuple[str, ...] = (
    "actor",
    "agreement",
    "code",
    "correlation_id",
    "details",
    "direction",
    "envelope_digest",
    "event",
    "gateway",
    "message_id",
    "message_type",
    "outcome",
    "partner",
    "reason",
    "receipt_digest",
    "seq",
    "time",
)


#: the documented event names; ``event`` is a free string, these are the ones the gateway writes
EVENTS: tuple[str, ...] = (
    "received",
    "rejected",
    "policy_decision",
    "published",
    "delivered",
    "sent",
    "receipt",
    "retry",
    "dead_lettered",
    "duplicate",
    "auth_failure",
    "operator_action",
    "cert_recorded",
    "crl_fetched",
    "crl_fetch_failed",
)


#: the version tag inside every signed checkpoint
CHECKPOINT_FORMAT = "maagw-audit-checkpoint/1"


_MAX_SAFE_INT = 2**53 - 1


_encode_str = json.encoder.encode_basestring


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing that happened, as the gateway reports it (before it gets a sequence number).

    ``details`` holds small, JSON-serialisable context (never payloads or keys); floats are
    refused because their JSON spelling differs between tools (use strings or integers).
    """

    event: str
    direction: str | None = None
    partner: str | None = None
    agreement: str | None = None
    message_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    envelope_digest: str | None = None
    receipt_digest: str | None = None
    outcome: str | None = None
    code: str | None = None
    reason: str | None = None
    actor: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise ValueError("AuditEvent.event must be a non-empty string")
        _check_json(self.details, "details")


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored log entry: an event with its place in the chain."""

    seq: int
    time: str
    gateway: str
    event: str
    direction: str | None
    partner: str | None
    agreement: str | None
    message_type: str | None
    message_id: str | None
    correlation_id: str | None
    envelope_digest: str | None
    receipt_digest: str | None
    outcome: str | None
    code: str | None
    reason: str | None
    actor: str | None
    details: str  # canonical JSON text of the details object
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        """Build from a row in ``ROW_COLUMNS`` order."""
        return cls(*row)

    def details_obj(self) -> dict[str, Any]:
        value = json.loads(self.details)
        return value if isinstance(value, dict) else {}

    def as_dict(self) -> dict[str, Any]:
        """The canonical object plus ``prev_hash`` and ``hash`` (one line of an export)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in ENTRY_FIELDS}
        out["details"] = self.details_obj()
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


#: column order of an entry row, as stores return it
ROW_COLUMNS: tuple[str, ...] = (
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
    "details",
    "prev_hash",
    "hash",
)


def _check_json(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise ValueError(f"{where}: integer {value} exceeds 53 bits; use a string")
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floats are not allowed in audit details; use a string")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            _check_json(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not JSON")


def canonical_json(value: Any) -> str:
    """JCS serialisation of a value restricted as ``AuditEvent.details`` is."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_entry(
    seq: int,
    time: str,
    gateway: str,
    event: str,
    direction: str | None,
    partner: str | None,
    agreement: str | None,
    message_type: str | None,
    message_id: str | None,
    correlation_id: str | None,
    envelope_digest: str | None,
    receipt_digest: str | None,
    outcome: str | None,
    code: str | None,
    reason: str | None,
    actor: str | None,
    details: str,
) -> bytes:
    """The canonical bytes of an entry; ``details`` is already canonical JSON text.

    Written out by hand (rather than ``json.dumps`` of a dict) because verify runs it
    once per entry; ``test_audit`` checks it equals ``canonical_json`` of the object.
    """
    e = _encode_str
    N = "null"
    return (
        f'{{"actor":{N if actor is None else e(actor)}'
        f',"agreement":{N if agreement is None else e(agreement)}'
        f',"code":{N if code is None else e(code)}'
        f',"correlation_id":{N if correlation_id is None else e(correlation_id)}'
        f',"details":{details}'
        f',"direction":{N if direction is None else e(direction)}'
        f',"envelope_digest":{N if envelope_digest is None else e(envelope_digest)}'
        f',"event":{N if event is None else e(event)}'
        f',"gateway":{N if gateway is None else e(gateway)}'
        f',"message_id":{N if message_id is None else e(message_id)}'
        f',"message_type":{N if message_type is None else e(message_type)}'
        f',"outcome":{N if outcome is None else e(outcome)}'
        f',"partner":{N if partner is None else e(partner)}'
        f',"reason":{N if reason is None else e(reason)}'
        f',"receipt_digest":{N if receipt_digest is None else e(receipt_digest)}'
        f',"seq":{seq}'
        f',"time":{N if time is None else e(time)}}}'
    ).encode()


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """SHA-256 over the previous hash (64 ASCII hex digits) followed by the canonical bytes."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(canonical)
    return h.hexdigest()


def checkpoint_bytes(gateway: str, seq: int, head_hash: str, time: str) -> bytes:
    """The exact bytes a checkpoint signature covers (JCS JSON, no trailing newline)."""
    return canonical_json(
        {
            "format": CHECKPOINT_FORMAT,
            "gateway": gateway,
            "head_hash": head_hash,
            "seq": seq,
            "time": time,
        }
    ).encode()


def utc_now() -> str:
    """The log's time format: UTC, microseconds, ``Z`` (sorts as text)."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Read an ISO 8601 time (date only means midnight UTC; no zone means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def evidence_digest(data: bytes) -> str:
    """The digest evidence is stored under: lower-case hex SHA-256 of the exact bytes."""
    return hashlib.sha256(data).hexdigest()
