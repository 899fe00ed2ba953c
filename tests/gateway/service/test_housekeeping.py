"""Housekeeping of the state store: one round an hour, failures logged, never fatal."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from structlog.testing import capture_logs

from gateway.errors import ErrorCode, StoreError
from gateway.service import housekeeping
from gateway.state.store import StateStore
from gateway.xml.envelope import DUPLICATE_RETENTION_SECONDS, FUTURE_SKEW_SECONDS


class FakeStore:
    """Answers ``housekeep`` from a script of results (an exception is raised), then ``{}``."""

    def __init__(self, *answers: dict[str, int] | Exception) -> None:
        self.answers = list(answers)
        self.windows: list[float] = []
        self.wanted = 1
        self.done = asyncio.Event()

    async def housekeep(self, now: float, window: float) -> dict[str, int]:
        self.windows.append(window)
        if len(self.windows) >= self.wanted:
            self.done.set()
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _rounds(store: FakeStore, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(housekeeping, "HOUSEKEEPING_SECONDS", 0.0)
    store.wanted = n
    task = asyncio.create_task(housekeeping.housekeep(cast(StateStore, store)))
    await asyncio.wait_for(store.done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_claims_are_kept_for_the_replay_window_the_skew_and_an_hour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store is asked to forget only what is older than window + skew + 1 h."""
    store = FakeStore({"claims": 0})
    await _rounds(store, monkeypatch, 1)
    assert store.windows[0] == DUPLICATE_RETENTION_SECONDS + FUTURE_SKEW_SECONDS + 3600


async def test_a_failed_round_is_logged_and_the_next_round_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store error is a warning; the loop goes on and logs what the next round removed."""
    failure = StoreError("disk full", code=ErrorCode.STORE_FAILED)
    store = FakeStore(failure, {"claims": 3, "outbox": 0})
    with capture_logs() as logs:
        await _rounds(store, monkeypatch, 2)
    events = [e["event"] for e in logs]
    assert events[:2] == ["housekeeping_failed", "housekeeping_done"]
    assert logs[1]["claims"] == 3


async def test_only_the_leader_keeps_a_shared_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds are skipped while another instance leads; the first round after taking over runs."""
    monkeypatch.setattr(housekeeping, "HOUSEKEEPING_SECONDS", 0.0)
    store = FakeStore({"claims": 1})
    checks: list[bool] = []

    def leads() -> bool:
        checks.append(len(checks) >= 5)  # a follower for five rounds, then the leader
        return checks[-1]

    task = asyncio.create_task(housekeeping.housekeep(cast(StateStore, store), leads=leads))
    await asyncio.wait_for(store.done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checks[:6] == [False] * 5 + [True]
    assert len(store.windows) == checks.count(True)  # a round for each round it led
