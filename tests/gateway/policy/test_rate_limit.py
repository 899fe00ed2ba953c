"""Tests for gateway/policy/rate_limit.py: token buckets per agreement and direction, and the refusal allowance."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.engine import evaluate
from gateway.policy.rate_limit import RateLimiter, TokenBucket
from maagw_testing.policy import (
    flow_rules,
    make_agreement,
    make_request,
)


def test_token_bucket_burst_then_waits() -> None:
    """A bucket gives its burst at once, then says how long until the next token."""
    bucket = TokenBucket(rate_per_minute=60, burst=3)
    assert [bucket.try_take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(100.0) == pytest.approx(1.0)
    assert bucket.try_take(100.5) == pytest.approx(0.5)
    assert bucket.try_take(101.0) == 0.0


def test_token_bucket_refill_is_capped_at_burst() -> None:
    """A long idle period refills the bucket only up to its burst."""
    bucket = TokenBucket(rate_per_minute=6, burst=2)
    bucket.try_take(0.0)
    bucket.try_take(0.0)
    taken = [bucket.try_take(10_000.0) for _ in range(3)]
    assert taken[:2] == [0.0, 0.0]
    assert taken[2] == pytest.approx(10.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0.5)])
def test_token_bucket_rejects_bad_sizes(rate: float, burst: float | None) -> None:
    """A bucket needs a positive rate and room for at least one token."""
    with pytest.raises(ValueError, match="must"):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=1, max_value=600),
    burst=st.floats(min_value=1, max_value=20),
    steps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60),
)
def test_token_bucket_never_exceeds_its_rate(rate: float, burst: float, steps: list[float]) -> None:
    """Over any span of time, tokens taken never exceed burst + rate x elapsed."""
    bucket = TokenBucket(rate, burst)
    now, taken = 0.0, 0
    for step in steps:
        now += step
        wait = bucket.try_take(now)
        assert wait >= 0.0
        taken += wait == 0.0
        assert taken <= burst + rate * now / 60 + 1e-9


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_rate_limit_is_back_pressure_in_both_directions(direction: str) -> None:
    """Past the flow's burst the limiter's wait becomes a POLICY_RATE decision with retry_after."""
    agreement = make_agreement(flow_rules(rate_per_minute=30, burst=2))
    limiter = RateLimiter()
    base = make_request(direction)
    verdicts = []
    for _ in range(3):
        wait = limiter.check(agreement, base.sender, base.receiver, now=50.0)
        decision = evaluate(
            agreement, dataclasses.replace(base, rate_ok=wait == 0.0, retry_after=wait or None)
        )
        verdicts.append((decision.code, decision.retry_after))
    assert verdicts[:2] == [("POLICY_ALLOW", None)] * 2
    assert verdicts[2][0] == "POLICY_RATE"
    assert verdicts[2][1] == pytest.approx(2.0)
    assert limiter.check(agreement, base.sender, base.receiver, now=52.0) == 0.0


def test_rate_limiter_keeps_one_bucket_per_agreement_and_direction() -> None:
    """Exhausting one direction or agreement leaves the others' allowance intact."""
    first = make_agreement(flow_rules(rate_per_minute=60, burst=1))
    second = make_agreement(flow_rules(rate_per_minute=60, burst=1), id="other")
    limiter = RateLimiter()
    assert limiter.check(first, "XA", "XB", 0.0) == 0.0
    assert limiter.check(first, "XA", "XB", 0.0) > 0
    assert limiter.check(first, "XB", "XA", 0.0) == 0.0
    assert limiter.check(second, "XA", "XB", 0.0) == 0.0
    assert limiter.check(first, "XA", "XC", 0.0) == 0.0


def test_rate_limiter_follows_a_reloaded_rate() -> None:
    """A reloaded agreement with a new rate gets a bucket of the new size."""
    limiter = RateLimiter()
    slow = make_agreement(flow_rules(rate_per_minute=1, burst=1))
    assert limiter.check(slow, "XA", "XB", 0.0) == 0.0
    assert limiter.check(slow, "XA", "XB", 0.0) == pytest.approx(60.0)
    fast = make_agreement(flow_rules(rate_per_minute=600, burst=5))
    assert [limiter.check(fast, "XA", "XB", 0.0) for _ in range(5)] == [0.0] * 5


def test_token_bucket_wait_tells_without_taking() -> None:
    """``wait`` reports the same as ``try_take`` would, and leaves the token there."""
    bucket = TokenBucket(rate_per_minute=60, burst=1)
    assert bucket.wait(0.0) == 0.0
    assert bucket.wait(0.0) == 0.0
    assert bucket.try_take(0.0) == 0.0
    assert bucket.wait(0.5) == pytest.approx(0.5)
    assert bucket.try_take(0.5) == pytest.approx(0.5)


def test_refusals_have_an_allowance_the_size_of_all_the_senders_flows() -> None:
    """The refusal allowance sums the sender's flows in every agreement; it does not touch theirs."""
    first = make_agreement(flow_rules(rate_per_minute=60, burst=2))
    second = make_agreement(flow_rules(rate_per_minute=60, burst=1), id="other")
    agreements = {a.id: a for a in (first, second)}
    limiter = RateLimiter()
    for _ in range(3):
        assert limiter.refusal_wait(agreements, "XA", "XB", 0.0) == 0.0
        limiter.refused(agreements, "XA", "XB", 0.0)
    # three refusals (bursts 2 + 1) used it up; it refills at 60 + 60 a minute
    assert limiter.refusal_wait(agreements, "XA", "XB", 0.0) == pytest.approx(0.5)
    assert limiter.refusal_wait(agreements, "XA", "XB", 0.5) == 0.0
    # the flows' own buckets, and the other direction's allowance, are untouched
    assert limiter.check(first, "XA", "XB", 0.0) == 0.0
    assert limiter.refusal_wait(agreements, "XB", "XA", 0.0) == 0.0


def test_a_sender_without_any_flow_gets_the_small_default_refusal_allowance() -> None:
    """A partner no agreement lets send may still be refused, but only so often."""
    from gateway.policy.rate_limit import REFUSALS_WITHOUT_FLOW_PER_MINUTE

    agreements = {"a": make_agreement()}
    limiter = RateLimiter()
    refused = 0
    while limiter.refusal_wait(agreements, "XC", "XB", 0.0) == 0.0:
        limiter.refused(agreements, "XC", "XB", 0.0)
        refused += 1
        assert refused <= 1000
    assert refused == REFUSALS_WITHOUT_FLOW_PER_MINUTE
