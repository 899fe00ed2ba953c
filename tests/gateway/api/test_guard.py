"""Unit tests of gateway/api/guard.py: the connection clock's states and deadlines.

The deadlines and caps against real connections are in
``tests/integration/test_partner_limits.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.guard import CLOSING_SECONDS, ConnectionClock
from gateway.config.models import ListenSection

#: short deadlines, so that a test waits fractions of a second
LIMITS = ListenSection(idle_timeout=0.2, header_timeout=0.1)


class Expiries:
    """Records the states whose deadline passed; an event per expiry."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.fired = asyncio.Event()

    def __call__(self, state: str) -> None:
        self.states.append(state)
        self.fired.set()

    async def next(self, timeout: float = 5.0) -> str:
        await asyncio.wait_for(self.fired.wait(), timeout)
        self.fired.clear()
        return self.states[-1]


def clock() -> tuple[ConnectionClock, Expiries]:
    expiries = Expiries()
    return ConnectionClock(lambda: LIMITS, expiries), expiries


async def test_an_admitted_connection_that_stays_silent_expires_idle() -> None:
    """With no byte after admission, the idle deadline passes."""
    c, expiries = clock()
    c.admitted()
    assert await expiries.next() == "idle"
    assert c.state == "expired"


async def test_a_first_byte_arms_the_header_deadline_and_more_bytes_do_not_extend_it() -> None:
    """Bytes trickling in keep the head deadline counting from the first of them."""
    c, expiries = clock()
    c.admitted()
    c.data()
    assert c.state == "head"
    started = asyncio.get_running_loop().time()
    for _ in range(3):
        await asyncio.sleep(0.02)  # a byte now and then, as a slowloris sends them
        c.data()
    assert await expiries.next() == "head"
    assert asyncio.get_running_loop().time() - started < LIMITS.idle_timeout


async def test_a_request_being_handled_has_no_deadline_here() -> None:
    """Once the head is parsed the clock waits for the answer (the body has its own timeout)."""
    c, expiries = clock()
    c.admitted()
    c.data()
    c.request_started()
    with pytest.raises(TimeoutError):
        await expiries.next(timeout=LIMITS.idle_timeout * 2)
    assert c.state == "request"


@pytest.mark.parametrize(("keep_alive", "state"), [(True, "idle"), (False, "closing")])
async def test_after_an_answer_the_connection_waits_idle_or_closes(
    keep_alive: bool, state: str
) -> None:
    """A kept-alive connection goes back to idle; another gets the closing deadline."""
    c, expiries = clock()
    c.admitted()
    c.data()
    c.request_started()
    c.request_finished(keep_alive=keep_alive)
    assert c.state == state
    c.data()  # bytes after the answer: in idle the next head, in closing ignored
    expected = "head" if keep_alive else "closing"
    assert await expiries.next(timeout=CLOSING_SECONDS + 5) == expected


async def test_a_stopped_clock_never_fires() -> None:
    """When the connection is gone its deadline is cancelled, and a late answer arms none."""
    c, expiries = clock()
    c.admitted()
    c.data()
    c.request_started()
    c.stop()
    c.request_finished(keep_alive=False)
    assert c.state == "closed"
    with pytest.raises(TimeoutError):
        await expiries.next(timeout=LIMITS.idle_timeout * 2)
    assert expiries.states == []
