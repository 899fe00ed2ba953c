"""Retry delays: exponential backoff with jitter over the ladder of delay queues."""

from __future__ import annotations

import random

from gateway.relay.topology import DELAYS

#: jitter only: not a secret
_rng = random.Random()  # noqa: S311


def delay_for(
    attempt: int,
    initial: float,
    maximum: float,
    *,
    at_least: float | None = None,
    rng: random.Random | None = None,
) -> int:
    """The delay queue for retry number ``attempt`` (1-based).

    Exponential from ``initial``, capped at ``maximum``, with "equal jitter": a pause
    drawn between half the backoff and the backoff, so that messages that failed
    together do not come back together. The pause is then rounded to one of the two
    neighbouring queues with the probability that keeps its expected value. A
    partner's Retry-After (``at_least``) is honoured: the smallest queue at least that
    long (up to the longest queue).
    """
    rng = rng or _rng
    if at_least is not None and at_least > 0:
        return next((d for d in DELAYS if d >= at_least), DELAYS[-1])
    backoff = min(initial * (2 ** min(attempt - 1, 32)), maximum)
    pause = rng.uniform(backoff / 2, backoff)
    below = [d for d in DELAYS if d <= pause]
    above = [d for d in DELAYS if d >= pause]
    if not below:
        return DELAYS[0]
    if not above:
        return DELAYS[-1]
    low, high = below[-1], above[0]
    if high == low or high > max(maximum, DELAYS[0]):
        return low
    return high if rng.random() < (pause - low) / (high - low) else low
