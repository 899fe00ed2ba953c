"""What a state store does, whichever engine holds it, and the records it hands out.

``StateStore`` is the protocol; ``SqliteStateStore`` (gateway/state/sqlite.py, one
instance, the default) and ``PostgresStateStore`` (gateway/state/postgres.py, several
instances sharing one database) implement it with the same semantics. ``open_state``
picks one by URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from gateway.health import Health

ClaimResult = Literal["claimed", "published", "in_flight"]

#: claim states: 'claimed' (publishing now), 'published' (confirmed), 'uncertain' (a publish
#: whose confirm never came: the broker may hold it, so a re-publish is marked as a possible
#: duplicate)


@dataclass(frozen=True, slots=True)
class Claim:
    """The state of one inbound (sender, message id)."""

    outcome: ClaimResult
    digest: str
    receipt_id: str | None
    #: an earlier publish of this id may have reached the broker: mark the re-publish
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A copy of a dead-lettered message."""

    id: int
    message_id: str | None
    partner: str | None
    direction: str
    code: str
    reason: str
    properties: dict[str, Any]
    body: bytes
    dead_at: float
    replayed_at: float | None


class StateStore(Protocol):
    """The gateway's own state: outbox, duplicate claims, dead letters, known requests.

    Every call is committed before it returns; calls that arrive together share one
    transaction (group commit), each rolled back alone if it fails. Failures raise
    ``StoreError`` and are reported to ``health``. See gateway/state/sqlite.py for the
    meaning of each call.
    """

    owner: str
    boot: str
    health: Health

    async def probe(self) -> None: ...
    async def close(self) -> None: ...
    async def outbox_get(self, message_id: str) -> tuple[bytes, str] | None: ...
    async def outbox_put(
        self, message_id: str, partner: str, signed: bytes, digest: str
    ) -> None: ...
    async def claim(
        self, sender: str, message_id: str, digest: str, *, stale_after: float
    ) -> Claim: ...
    async def take_over_claims(self) -> int: ...
    async def mark_published(self, sender: str, message_id: str, receipt_id: str) -> None: ...
    async def release(self, sender: str, message_id: str, *, uncertain: bool = False) -> None: ...
    async def expire_claims(self, older_than: float) -> int: ...
    async def housekeep(
        self, now: float, window: float, *, chunk: int = 5000
    ) -> dict[str, int]: ...
    async def remember_request(self, agreement: str, requester: str, message_id: str) -> None: ...
    async def knows_request(self, agreement: str, requester: str, message_id: str) -> bool: ...
    async def dead_put(
        self,
        *,
        message_id: str | None,
        partner: str | None,
        direction: str,
        code: str,
        reason: str,
        properties: Mapping[str, Any],
        body: bytes,
    ) -> int: ...
    async def dead_list(self, limit: int = 100) -> list[DeadLetter]: ...
    async def dead_get(self, dead_id: int) -> DeadLetter | None: ...
    async def dead_mark_replayed(self, dead_id: int) -> None: ...
    async def dead_claim_replay(self, dead_id: int, *, again: bool = False) -> bool: ...
    async def dead_unclaim_replay(self, dead_id: int, previous: float | None) -> None: ...


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database rather than an SQLite file."""
    return url.startswith(("postgresql://", "postgres://"))


async def open_state(url: str | Path, *, owner: str = "-", boot: str = "-") -> StateStore:
    """Open the state store at ``url``: ``postgresql://…`` or the path of an SQLite file."""
    # imported here: each engine module imports this one for the records
    if isinstance(url, str) and is_postgres(url):
        from gateway.state.postgres import PostgresStateStore

        return await PostgresStateStore.open(url, owner=owner, boot=boot)
    from gateway.state.sqlite import SqliteStateStore

    return await SqliteStateStore.open(Path(url), owner=owner, boot=boot)
