"""gateway/relay/topology.py: the delay queues, and the retry delays over them (capped, jittered, Retry-After)."""

from __future__ import annotations

import random
import statistics

import pytest

from gateway.pipeline.settle import delay_for
from gateway.relay.topology import DELAYS


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 200])
def test_every_delay_is_a_queue_and_never_beyond_the_cap(attempt: int) -> None:
    """Each delay is one of the delay queues and at most the configured cap (30 s here)."""
    rng = random.Random(attempt)
    for _ in range(500):
        delay = delay_for(attempt, 1.0, 30.0, rng=rng)
        assert delay in DELAYS
        assert 1 <= delay <= 30


def test_messages_that_failed_together_do_not_come_back_together() -> None:
    """At the cap, 500 retries are spread over several queues, around three quarters of the cap."""
    rng = random.Random(7)
    delays = [delay_for(12, 1.0, 300.0, rng=rng) for _ in range(500)]
    assert len(set(delays)) >= 3
    assert min(delays) >= 120 and max(delays) <= 300
    # equal jitter: uniform between half the backoff and the backoff, mean 3/4 of it
    assert 200 <= statistics.mean(delays) <= 250


def test_the_backoff_grows_exponentially_until_the_cap() -> None:
    """The mean delay doubles per attempt until it reaches the cap."""
    rng = random.Random(3)
    means = [
        statistics.mean(delay_for(a, 2.0, 60.0, rng=rng) for _ in range(400)) for a in (1, 2, 3, 4)
    ]
    assert means[0] < means[1] < means[2] < means[3]
    assert 1.2 <= means[1] / means[0] <= 2.8
    far = statistics.mean(delay_for(30, 2.0, 60.0, rng=rng) for _ in range(400))
    assert 40 <= far <= 60


@pytest.mark.parametrize(("asked", "expected"), [(1, 1), (3, 4), (30, 30), (31, 60), (10**6, 3600)])
def test_a_partners_retry_after_is_honoured(asked: float, expected: int) -> None:
    """A Retry-After gives the smallest delay queue at least that long, whatever the backoff."""
    assert delay_for(1, 1.0, 2.0, at_least=asked) == expected


def test_the_shipped_definitions_file_is_the_current_topology() -> None:
    """deploy/rabbitmq/definitions.json is what `maagw config topology --no-prefix` writes for XB."""
    import json
    from pathlib import Path

    from gateway.relay.topology import Names, topology

    shipped = Path(__file__).resolve().parents[3] / "deploy" / "rabbitmq" / "definitions.json"
    assert json.loads(shipped.read_text()) == topology(Names(""), ["XB"], vhost="/")
