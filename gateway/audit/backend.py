"""Where the exchange log lives: SQLite (default) and PostgreSQL stores.

A store knows SQL, not policy. Its one write operation, ``write_batch``, takes every
append and evidence item waiting at that moment and commits them in ONE transaction:
inside it the store reads the chain head, chains the new entries onto it and inserts
them, so the chain stays linear even when several processes write to the same
database (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock).

Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a commit has been
fsynced before ``write_batch`` returns (with ``NORMAL``, WAL mode may lose the last
transactions on power loss — an acknowledged exchange without its entry). PostgreSQL
is used with its default ``synchronous_commit=on``.

Entries are append-only at the SQL level too: triggers refuse UPDATE and DELETE on
``audit_entries`` (defence in depth; the hash chain is what proves integrity).

Schema migrations are ordered lists per backend; ``audit_schema_version`` records
which have run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from gateway.audit.chain import ROW_COLUMNS, Entry, canonical_entry, chain_hash

# S608 is silenced below: SQL is assembled only from constant column names and placeholders;
# values are always bound parameters.
log = structlog.get_logger(__name__)


T = TypeVar("T")


#: an entry waiting to be chained: ROW_COLUMNS[3:17] (event … actor, details as canonical text)
Pending = tuple[Any, ...]


#: rows fetched per round trip while verifying or exporting
CHUNK = 5_000

#: called with (done, total) as a long operation goes on
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    digest: str
    kind: str
    data: bytes
    stored_at: str
    retention_until: str


@dataclass(frozen=True, slots=True)
class EvidenceInfo:
    """What the log knows about one piece of evidence (without its bytes)."""

    digest: str
    kind: str
    size: int
    stored_at: str
    retention_until: str
    purged_at: str | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that entry ``seq`` has hash ``head_hash``."""

    seq: int
    head_hash: str
    time: str
    gateway: str
    signed_bytes: bytes
    signature: bytes
    cert_pem: str


@dataclass(frozen=True, slots=True)
class SearchFilter:
    partner: str | None = None
    agreement: str | None = None
    message_type: str | None = None
    message_id: str | None = None
    event: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 1000


def chain_rows(
    head_seq: int, head_hash: str, time: str, gateway: str, pending: Sequence[Pending]
) -> list[tuple[Any, ...]]:
    """Give each pending entry its seq, time, gateway, prev_hash and hash."""
    rows: list[tuple[Any, ...]] = []
    prev = head_hash
    seq = head_seq
    for p in pending:
        seq += 1
        h = chain_hash(prev, canonical_entry(seq, time, gateway, *p))
        rows.append((seq, time, gateway, *p, prev, h))
        prev = h
    return rows


class AuditStore(Protocol):
    """What ``AuditLog`` needs from a backend."""

    async def write_batch(
        self, gateway: str, entries: Sequence[Pending], evidence: Sequence[EvidenceItem]
    ) -> tuple[int, str]:
        """Commit everything in one transaction; return the new head (seq, hash)."""
        ...

    async def head(self) -> tuple[int, str]: ...
    async def probe(self) -> None:
        """A small write outside the chain (health): raises ``AuditError`` if it fails."""
        ...

    async def add_checkpoint(self, cp: Checkpoint) -> None: ...
    async def checkpoints(self) -> list[Checkpoint]: ...
    async def count(self, from_seq: int, to_seq: int) -> int: ...
    def iter_rows(
        self, from_seq: int, to_seq: int, chunk: int
    ) -> AsyncIterator[list[tuple[Any, ...]]]: ...
    async def search(self, flt: SearchFilter) -> list[Entry]: ...
    async def timeline(self, message_id: str) -> list[Entry]: ...
    async def seq_at_time(self, time: str, *, after: bool) -> int: ...
    async def get_evidence(self, digest: str) -> bytes | None: ...
    async def evidence_info(self, digests: Sequence[str]) -> list[EvidenceInfo]: ...
    async def purge(self, now: str) -> int: ...
    async def close(self) -> None: ...


_COLS = ", ".join(ROW_COLUMNS)


def _where(flt: SearchFilter, style: str) -> tuple[str, list[Any]]:
    """WHERE clause for a search; ``style`` is ``?`` (SQLite) or ``$`` (PostgreSQL)."""
    clauses: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        mark = "?" if style == "?" else f"${len(args)}"
        clauses.append(sql.replace("%s", mark))

    for column in ("partner", "agreement", "message_type", "message_id", "event", "outcome"):
        value = getattr(flt, column)
        if value is not None:
            add(f"{column} = %s", value)
    if flt.since is not None:
        add("time >= %s", flt.since)
    if flt.until is not None:
        add("time <= %s", flt.until)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args
