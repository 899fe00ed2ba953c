"""Rate limits: token buckets per flow, and the allowance for refused messages."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.agreement import Agreement

# --- rate limits --------------------------------------------------------------------------


class TokenBucket:
    """A token bucket refilled at ``rate_per_minute``; time is passed in, so it is pure.

    It starts full with ``burst`` tokens (default: a minute's allowance, at least one).
    """

    __slots__ = ("_last", "_per_second", "_tokens", "burst", "rate_per_minute")

    def __init__(self, rate_per_minute: float, burst: float | None = None) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate_per_minute = rate_per_minute
        self.burst = burst if burst is not None else max(1.0, rate_per_minute)
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._per_second = rate_per_minute / 60.0
        self._tokens = self.burst
        self._last: float | None = None

    def try_take(self, now: float) -> float:
        """Take a token at time ``now`` (seconds): 0.0 if taken, else the seconds to wait."""
        wait = self.wait(now)
        if wait == 0.0:
            self._tokens -= 1.0
        return wait

    def wait(self, now: float) -> float:
        """The seconds until a token is there at time ``now`` (0.0: one is); takes none."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self._per_second)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self._per_second


#: refusals a minute of a sender that has no flow to the receiver in any agreement
REFUSALS_WITHOUT_FLOW_PER_MINUTE = 60.0


class RateLimiter:
    """One token bucket per (agreement id, sender, receiver), sized from the flow's rule.

    A bucket is rebuilt when a reloaded agreement changes the flow's rate or burst.

    Refused messages have an allowance of their own, one bucket per (sender,
    receiver), as large as all the sender's flows to the receiver together (the sum of
    their rates and bursts; ``REFUSALS_WITHOUT_FLOW_PER_MINUTE`` without any): a
    partner can make the receiver refuse at most as many messages as it may send.
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._refusals: dict[tuple[str, str], TokenBucket] = {}

    def check(self, agreement: Agreement, sender: str, receiver: str, now: float) -> float:
        """Take a token for one message: 0.0 when it may go, else the seconds to wait.

        A flow the agreement does not have is not rate limited here: ``evaluate``
        refuses it. Check the rate after ``evaluate`` allowed the message, so that
        refused messages take from the refusal allowance (``refused``) only.
        """
        flow = agreement.flow(sender, receiver)
        if flow is None:
            return 0.0
        key = (agreement.id, sender, receiver)
        bucket = self._buckets.get(key)
        burst = flow.burst if flow.burst is not None else max(1.0, flow.rate_per_minute)
        if (
            bucket is None
            or bucket.rate_per_minute != flow.rate_per_minute
            or bucket.burst != burst
        ):
            bucket = self._buckets[key] = TokenBucket(flow.rate_per_minute, burst)
        return bucket.try_take(now)

    def refusal_wait(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str, now: float
    ) -> float:
        """Seconds until ``sender``'s refusal allowance has room again (0.0: it has); takes none."""
        return self._refusal_bucket(agreements, sender, receiver).wait(now)

    def refused(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str, now: float
    ) -> None:
        """Charge one refused message to ``sender``'s refusal allowance (if any is left)."""
        self._refusal_bucket(agreements, sender, receiver).try_take(now)

    def _refusal_bucket(
        self, agreements: Mapping[str, Agreement], sender: str, receiver: str
    ) -> TokenBucket:
        flows = [f for a in agreements.values() if (f := a.flow(sender, receiver)) is not None]
        rate = sum(f.rate_per_minute for f in flows) or REFUSALS_WITHOUT_FLOW_PER_MINUTE
        burst = sum(f.burst if f.burst is not None else max(1.0, f.rate_per_minute) for f in flows)
        burst = burst or max(1.0, rate)
        bucket = self._refusals.get((sender, receiver))
        if bucket is None or bucket.rate_per_minute != rate or bucket.burst != burst:
            bucket = self._refusals[(sender, receiver)] = TokenBucket(rate, burst)
        return bucket
