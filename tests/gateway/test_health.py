"""Tests for gateway/health.py: readiness follows each write, one error line per failure episode."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.health import Health


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    """The captured log lines of one event name."""
    return [e for e in logs if e["event"] == name]


# health.failed() builds the probe coroutine before finding there is no loop to run it on,
# so the coroutine is dropped unawaited; harmless (nothing to probe), reported, not hidden
# elsewhere: the filter names exactly that coroutine.
@pytest.mark.filterwarnings("ignore:coroutine 'Health._watch' was never awaited:RuntimeWarning")
def test_a_failure_without_a_loop_turns_readiness_off_and_a_success_on() -> None:
    """A synchronous caller may report outcomes: no probe starts, the episode ends at the success."""
    health = Health("state")
    with capture_logs() as logs:
        health.failed("STORE_IO", "disk full")
        assert not health.healthy
        assert health.last_error == "STORE_IO: disk full"
        health.succeeded()
    assert health.healthy
    assert health.episodes == 1
    assert len(events(logs, "store_failed")) == 1
    assert len(events(logs, "store_recovered")) == 1


async def test_repeated_failures_are_one_episode_logged_once() -> None:
    """Many failures in a row log store_failed once, and readiness flaps with each outcome."""
    health = Health("audit", every=0.01, quiet=60)
    with capture_logs() as logs:
        for _ in range(5):
            health.failed("AUDIT_WRITE", "locked")
        health.succeeded()
        assert health.healthy
        health.failed("AUDIT_WRITE", "locked again")
        assert not health.healthy
        health.stop()
    assert health.episodes == 1
    assert len(events(logs, "store_failed")) == 1


async def test_the_probe_brings_readiness_back_without_traffic() -> None:
    """While failing, the probe runs; once it makes a write work the episode ends after the quiet period."""
    health = Health("state", every=0.01, quiet=0.05)
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        health.succeeded()

    health._probe = probe
    with capture_logs() as logs:
        health.failed("STORE_IO", "disk full")
        assert await health.wait(2.0)
        await asyncio.sleep(0.3)  # the quiet period (0.05 s) and a few probe rounds
    assert calls >= 1
    assert health.healthy
    assert len(events(logs, "store_recovered")) == 1


async def test_wait_gives_up_after_its_timeout() -> None:
    """wait() says False when the dependency stays failing, and True at once when healthy."""
    health = Health("state", every=10)
    assert await health.wait(0.01)
    health.failed("STORE_IO", "disk full")
    assert not await health.wait(0.05)
    health.stop()
