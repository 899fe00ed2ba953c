"""The records the state store hands out, whichever engine holds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
