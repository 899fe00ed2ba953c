"""Load generation over AMQP, collection by message id, and the per-step statistics.

A ``Collector`` consumes the queue the back office reads (and, for the gateway,
its events queue) for the whole run and counts every message by id, so that a
copy arriving late is still seen. ``drive`` publishes N messages at an offered
rate (or as fast as the broker confirms them), records when each was published,
and waits until every one has arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

#: header carrying the publish time (seconds, monotonic clock of the load generator)
SENT_HEADER = "x-bench-sent"
#: publishes awaiting their confirm at once, at most
MAX_IN_FLIGHT = 256


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def steady_rate(arrivals: list[float]) -> float:
    """Messages per second over the middle 80 % of arrivals (start and drain left out)."""
    n = len(arrivals)
    if n < 10:
        if n < 2:
            return math.nan
        span = max(arrivals) - min(arrivals)
        return (n - 1) / span if span > 0 else math.nan
    ordered = sorted(arrivals)
    lo, hi = int(n * 0.1), int(n * 0.9) - 1
    span = ordered[hi] - ordered[lo]
    return (hi - lo) / span if span > 0 else math.nan


@dataclass
class Accounting:
    """What arrived of what was sent: the zero-loss, zero-duplicate check."""

    sent: int
    received: int
    unique: int
    lost: int
    duplicated: int
    events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.received == self.sent


def account(
    sent: list[str],
    arrivals: collections.Counter[str],
    events: dict[str, list[str]] | None = None,
) -> Accounting:
    """Count lost (never arrived) and duplicated (arrived more than once) messages of ``sent``."""
    wanted = set(sent)
    received = sum(c for mid, c in arrivals.items() if mid in wanted)
    unique = sum(1 for mid in wanted if arrivals.get(mid, 0) > 0)
    duplicated = sum(c - 1 for mid, c in arrivals.items() if mid in wanted and c > 1)
    statuses: collections.Counter[str] = collections.Counter()
    for mid in wanted:
        for status in (events or {}).get(mid, []):
            statuses[status] += 1
    return Accounting(
        sent=len(sent),
        received=received,
        unique=unique,
        lost=len(wanted) - unique,
        duplicated=duplicated,
        events=dict(statuses),
    )


class Collector:
    """Counts arrivals (and status events) by message id, with the first arrival time."""

    def __init__(self) -> None:
        self.arrivals: collections.Counter[str] = collections.Counter()
        self.first_arrival: dict[str, float] = {}
        self.events: dict[str, list[str]] = collections.defaultdict(list)
        self.progress = asyncio.Event()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.monotonic()
        mid = str(message.message_id)
        self.arrivals[mid] += 1
        self.first_arrival.setdefault(mid, now)
        self.progress.set()

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            status = str(json.loads(message.body).get("status"))
        except ValueError:
            status = "unreadable"
        self.events[str(message.message_id)].append(status)
        self.progress.set()

    async def attach(
        self, connection: Any, queue_name: str, *, events_queue: str | None = None
    ) -> AbstractChannel:
        """Consume ``queue_name`` (and ``events_queue``) with automatic acks."""
        channel: AbstractChannel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(queue_name, ensure=True)
        await queue.consume(self.on_message, no_ack=True)
        if events_queue is not None:
            events = await channel.get_queue(events_queue, ensure=True)
            await events.consume(self.on_event, no_ack=True)
        return channel

    def done(self, ids: list[str], *, want_event: str | None) -> int:
        """How many of ``ids`` are complete (arrived, and reported ``want_event`` if given)."""
        if want_event is None:
            return sum(1 for mid in ids if mid in self.first_arrival)
        return sum(
            1 for mid in ids if mid in self.first_arrival and want_event in self.events.get(mid, ())
        )


@dataclass
class Target:
    """Where the load goes in: an exchange and routing key, with the gateway's properties."""

    exchange: str
    routing_key: str
    message_type: str = "maa.request"
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepTimes:
    """When each message of a step was published and when the step ended."""

    ids: list[str]
    published: dict[str, float]
    started: float
    publish_done: float
    finished: float
    stalled: bool


def message_ids(tag: str, n: int) -> list[str]:
    """``n`` unique message ids for one step (at most 35 characters, as national forms allow)."""
    run = uuid.uuid4().hex[:8]
    return [f"B-{tag}-{run}-{i:06d}" for i in range(n)]


async def drive(
    connection: Any,
    target: Target,
    body: bytes,
    ids: list[str],
    rate: float | None,
    collector: Collector,
    *,
    want_event: str | None,
    stall_timeout: float = 30.0,
    linger: float = 1.0,
) -> StepTimes:
    """Publish ``ids`` at ``rate`` per second (None: unthrottled) and wait for all to arrive."""
    channel = await connection.channel(publisher_confirms=True)
    exchange: AbstractExchange
    if target.exchange:
        exchange = await channel.get_exchange(target.exchange, ensure=False)
    else:
        exchange = channel.default_exchange
    published: dict[str, float] = {}
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    pending: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    async def publish(mid: str) -> None:
        try:
            sent = time.monotonic()
            published[mid] = sent
            headers = dict(target.headers)
            headers[SENT_HEADER] = f"{sent:.6f}"
            await exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=mid,
                    type=target.message_type,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=target.routing_key,
                timeout=30,
            )
        except Exception as exc:
            failures.append(exc)
        finally:
            slots.release()

    loop = asyncio.get_running_loop()
    started = time.monotonic()
    for i, mid in enumerate(ids):
        if rate is not None:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
        await slots.acquire()
        task = loop.create_task(publish(mid))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    publish_done = time.monotonic()
    if failures:
        raise RuntimeError(f"{len(failures)} publishes failed, first: {failures[0]!r}")
    await channel.close()

    stalled = False
    last_done, last_change = -1, time.monotonic()
    while True:
        done = collector.done(ids, want_event=want_event)
        if done >= len(ids):
            break
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > stall_timeout:
            stalled = True
            break
        collector.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collector.progress.wait(), timeout=1.0)
    finished = time.monotonic()
    # keep consuming briefly so that a duplicate would be counted too
    await asyncio.sleep(linger)
    return StepTimes(ids, published, started, publish_done, finished, stalled)


def latencies(times: StepTimes, collector: Collector) -> list[float]:
    """Milliseconds from publish to first arrival, for the messages that arrived."""
    return [
        (collector.first_arrival[mid] - times.published[mid]) * 1000
        for mid in times.ids
        if mid in collector.first_arrival and mid in times.published
    ]
