"""The in-memory relay (gateway/relay/memory.py) kept honest against RabbitMQ.

The contract tests run the same assertions on a ``MemoryRelay`` and on a real
``Relay`` with a unique broker prefix (its topology deleted afterwards); the
fake-only tests at the end cover what RabbitMQ cannot be made to do on demand
(unconfirmed and nacked publishes, a broker gone) and the fake's own clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aio_pika
import pytest

from gateway.contract import AmqpHeader
from gateway.errors import RelayError
from gateway.relay.broker import Relay
from gateway.relay.memory import MemoryBroker, MemoryRelay
from gateway.relay.message import IncomingMessage, RelayPort
from gateway.relay.topology import DELIVERY_LIMIT, Names
from maagw_testing.broker import RABBITMQ_URL, delete_topology, unique_prefix
from maagw_testing.services import require_service

PARTNER = "XA"

#: how long a real broker gets to (not) deliver something
WAIT = 5.0

#: the fake's delay queues run a thousand times faster than the real ones
TIME_SCALE = 0.001


@dataclass
class Side:
    """One kind of broker (the fake or RabbitMQ) and the relays a test opened on it."""

    kind: str
    names: Names
    broker: MemoryBroker | None = None
    relays: list[RelayPort] = field(default_factory=list)

    async def relay(self, *, prefetch: int = 8) -> RelayPort:
        """A connected relay (the partner's topology declared) on this broker."""
        relay: RelayPort
        if self.broker is not None:
            relay = MemoryRelay(self.names, broker=self.broker, prefetch=prefetch)
        else:
            relay = Relay(
                RABBITMQ_URL,
                self.names,
                prefetch=prefetch,
                connection_name=f"maagw-{self.names.prefix}test",
            )
        await relay.connect([PARTNER])
        self.relays.append(relay)
        return relay

    def inbox(self) -> Inbox:
        """A handler that keeps deliveries; it waits longer for a real broker to be quiet."""
        return Inbox(0.01 if self.broker is not None else 0.3)

    async def ready_count(self, queue: str) -> int:
        """Messages ready in ``queue`` (neither delivered nor settled)."""
        if self.broker is not None:
            return len(self.broker.queues[queue].ready)
        connection = await aio_pika.connect(RABBITMQ_URL)
        try:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await connection.close()


@pytest.fixture(
    params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)],
)
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    """The fake, or RabbitMQ under a unique prefix whose objects are deleted afterwards."""
    names = Names(unique_prefix("mem"))
    if request.param == "memory":
        side = Side("memory", names, MemoryBroker(time_scale=TIME_SCALE))
    else:
        require_service("RabbitMQ", "127.0.0.1", 5672)
        side = Side("rabbitmq", names)
    try:
        yield side
    finally:
        for relay in side.relays:
            await relay.close()
        if side.broker is None:
            await delete_topology(RABBITMQ_URL, names, [PARTNER])


class Inbox:
    """A consumer's handler that keeps every delivery for the test to settle."""

    def __init__(self, quiet_for: float = 0.01) -> None:
        self.queue: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self.quiet_for = quiet_for

    async def __call__(self, message: IncomingMessage) -> None:
        await self.queue.put(message)

    async def next(self, timeout: float = WAIT) -> IncomingMessage:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def quiet(self) -> bool:
        """True if nothing more is delivered for a while (long enough for the broker)."""
        await asyncio.sleep(self.quiet_for)
        return self.queue.empty()


async def publish(relay: RelayPort, message_id: str, **headers: object) -> None:
    """Publish as the back office does: to the outbound exchange, for the partner."""
    await relay.publish(
        relay.names.outbound,
        PARTNER,
        f"body of {message_id}".encode(),
        message_id=message_id,
        headers=headers,
    )


# --- contract: the same assertions on the fake and on RabbitMQ ----------------------------


async def test_a_published_message_arrives_with_its_properties_and_headers(side: Side) -> None:
    """Body, message id, type, correlation id, content type and headers survive the trip."""
    relay = await side.relay()
    inbox = side.inbox()
    await relay.consume(relay.names.outbound_queue(PARTNER), inbox)
    await relay.publish(
        relay.names.outbound,
        PARTNER,
        b"<x/>",
        message_id="m-1",
        message_type="maa.request",
        correlation_id="c-1",
        content_type="application/xml",
        headers={AmqpHeader.FORMAT: "maa-xml", AmqpHeader.ATTEMPT: 3},
    )
    got = await inbox.next()
    assert (got.body, got.message_id, got.type, got.correlation_id, got.content_type) == (
        b"<x/>",
        "m-1",
        "maa.request",
        "c-1",
        "application/xml",
    )
    assert got.headers[AmqpHeader.FORMAT] == "maa-xml"
    assert got.headers[AmqpHeader.ATTEMPT] == 3
    assert not got.redelivered
    assert not got.processed
    await got.ack()
    assert got.processed


async def test_an_acked_message_is_gone_and_an_unsettled_one_returns_on_close(side: Side) -> None:
    """After close, the acked message is gone and the unsettled one is back, redelivered."""
    relay = await side.relay()
    inbox = side.inbox()
    queue = relay.names.outbound_queue(PARTNER)
    await relay.consume(queue, inbox)
    await publish(relay, "acked")
    await publish(relay, "kept")
    first, second = await inbox.next(), await inbox.next()
    assert [first.message_id, second.message_id] == ["acked", "kept"]
    await first.ack()
    await relay.close()
    assert await side.ready_count(queue) == 1
    again = side.inbox()
    await (await side.relay()).consume(queue, again)
    back = await again.next()
    assert back.message_id == "kept"
    assert back.redelivered
    await back.ack()


async def test_nack_with_requeue_redelivers_first_and_counts_the_delivery(side: Side) -> None:
    """``nack(requeue=True)``: the message comes again before the next one, marked redelivered."""
    relay = await side.relay(prefetch=1)
    inbox = side.inbox()
    await publish(relay, "a")
    await publish(relay, "b")
    await relay.consume(relay.names.outbound_queue(PARTNER), inbox)
    got = await inbox.next()
    assert (got.message_id, got.redelivered) == ("a", False)
    await got.nack(requeue=True)
    again = await inbox.next()
    assert (again.message_id, again.redelivered) == ("a", True)
    assert again.headers.get("x-delivery-count") == 1
    await again.ack()
    last = await inbox.next()
    assert (last.message_id, last.redelivered) == ("b", False)
    await last.ack()


@pytest.mark.parametrize("how", ["nack", "reject"])
async def test_a_refused_message_is_dead_lettered_where_the_topology_says(
    side: Side, how: str
) -> None:
    """``nack(requeue=False)`` or ``reject``: into the dead queue, with the x-death headers."""
    relay = await side.relay()
    inbox, dead = side.inbox(), side.inbox()
    queue = relay.names.outbound_queue(PARTNER)
    await relay.consume(queue, inbox)
    await relay.consume(relay.names.dead, dead)
    await publish(relay, "refused", **{AmqpHeader.FORMAT: "maa-xml"})
    got = await inbox.next()
    await (got.nack(requeue=False) if how == "nack" else got.reject())
    letter = await dead.next()
    assert letter.message_id == "refused"
    assert letter.body == b"body of refused"
    assert letter.headers[AmqpHeader.FORMAT] == "maa-xml"
    assert letter.headers["x-first-death-reason"] == "rejected"
    assert letter.headers["x-first-death-queue"] == queue
    assert letter.headers["x-first-death-exchange"] == relay.names.outbound
    death = letter.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", queue, 1)
    await letter.ack()
    assert await inbox.quiet()


async def test_a_message_redelivered_past_the_delivery_limit_is_dead_lettered(
    side: Side,
) -> None:
    """A poison message given back more than ``DELIVERY_LIMIT`` times goes to the dead queue."""
    relay = await side.relay()
    inbox, dead = side.inbox(), side.inbox()
    await relay.consume(relay.names.outbound_queue(PARTNER), inbox)
    await relay.consume(relay.names.dead, dead)
    await publish(relay, "poison")
    for _ in range(DELIVERY_LIMIT + 1):
        got = await inbox.next()
        await got.nack(requeue=True)
    letter = await dead.next()
    assert letter.message_id == "poison"
    assert letter.headers["x-first-death-reason"] == "delivery_limit"
    await letter.ack()
    assert await inbox.quiet()


async def test_a_delay_queue_returns_the_message_to_its_partner_queue_after_its_ttl(
    side: Side,
) -> None:
    """A retry published to the shortest delay queue is back in the partner queue after it."""
    relay = await side.relay()
    inbox = side.inbox()
    await relay.consume(relay.names.outbound_queue(PARTNER), inbox)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await relay.publish(
        relay.names.retry,
        f"1s.{PARTNER}",
        b"again",
        message_id="later",
        headers={AmqpHeader.ATTEMPT: 2},
    )
    assert await side.ready_count(relay.names.retry_queue(1)) == 1
    got = await inbox.next()
    waited = loop.time() - sent
    assert got.message_id == "later"
    assert got.headers[AmqpHeader.ATTEMPT] == 2
    assert got.headers["x-first-death-reason"] == "expired"
    assert got.headers["x-first-death-queue"] == relay.names.retry_queue(1)
    scale = TIME_SCALE if side.kind == "memory" else 1.0
    assert waited >= 0.9 * scale
    await got.ack()


async def test_an_unroutable_publish_is_returned(side: Side) -> None:
    """A publish no queue is bound for raises ``RELAY_RETURNED`` (mandatory publish)."""
    relay = await side.relay()
    with pytest.raises(RelayError) as caught:
        await relay.publish(relay.names.outbound, "nobody", b"x", message_id="lost")
    assert caught.value.code == "RELAY_RETURNED"


async def test_a_consumer_holds_at_most_prefetch_unsettled_messages(side: Side) -> None:
    """With prefetch 2, two messages are delivered; settling one lets the third come."""
    relay = await side.relay(prefetch=2)
    inbox = side.inbox()
    for i in range(4):
        await publish(relay, f"p{i}")
    await relay.consume(relay.names.outbound_queue(PARTNER), inbox)
    first, second = await inbox.next(), await inbox.next()
    assert await inbox.quiet()
    await first.ack()
    third = await inbox.next()
    assert [first.message_id, second.message_id, third.message_id] == ["p0", "p1", "p2"]
    assert await inbox.quiet()
    await second.ack()
    await third.ack()
    await (await inbox.next()).ack()


async def test_an_event_is_json_on_the_events_queue(side: Side) -> None:
    """``publish_event``: sorted compact JSON, routed ``<partner>.<status>``, typed ``event.<status>``."""
    relay = await side.relay()
    events = side.inbox()
    await relay.consume(relay.names.events, events)
    await relay.publish_event(PARTNER, "delivered", {"message_id": "m-9", "status": "delivered"})
    got = await events.next()
    assert json.loads(got.body) == {"message_id": "m-9", "status": "delivered"}
    assert (got.type, got.message_id, got.content_type) == (
        "event.delivered",
        "m-9",
        "application/json",
    )
    await got.ack()


async def test_take_dead_copy_removes_only_the_dead_letter_asked_for(side: Side) -> None:
    """The copy whose dead-id header matches is removed; the others stay; absent is False."""
    relay = await side.relay()
    for dead_id in (6, 7, 8):
        await relay.publish(
            relay.names.dlx,
            PARTNER,
            b"dead",
            message_id=f"d{dead_id}",
            headers={AmqpHeader.DEAD_ID: str(dead_id)},
        )
    assert await relay.take_dead_copy(7)
    assert not await relay.take_dead_copy(7)
    assert await side.ready_count(relay.names.dead) == 2


async def test_stop_consuming_stops_deliveries_and_keeps_the_unsettled_ones(side: Side) -> None:
    """After ``stop_consuming`` nothing new arrives, and a delivery still held can be acked."""
    relay = await side.relay()
    inbox = side.inbox()
    queue = relay.names.outbound_queue(PARTNER)
    await relay.consume(queue, inbox)
    assert relay.consumes(queue)
    await publish(relay, "held")
    held = await inbox.next()
    await relay.stop_consuming()
    assert not relay.consumes(queue)
    await publish(relay, "waits")
    assert await inbox.quiet()
    await held.ack()
    await relay.close()
    assert await side.ready_count(queue) == 1


# --- the fake alone: faults and its clock ---------------------------------------------------


@pytest.fixture
async def fake() -> MemoryRelay:
    """A connected in-memory relay with the partner's topology."""
    relay = MemoryRelay(Names("t."), prefetch=4)
    await relay.connect([PARTNER])
    return relay


@pytest.mark.parametrize("code", ["RELAY_UNCONFIRMED", "RELAY_NACKED"])
async def test_an_injected_publish_fault_raises_its_code_once(fake: MemoryRelay, code: str) -> None:
    """``fail_publish``: the next publish raises the code and lands nowhere; the one after works."""
    fake.fail_publish(code, times=1)  # type: ignore[arg-type]
    with pytest.raises(RelayError) as caught:
        await publish(fake, "first")
    assert caught.value.code == code
    assert fake.messages(fake.names.outbound_queue(PARTNER)) == []
    await publish(fake, "second")
    assert [m.message_id for m in fake.messages(fake.names.outbound_queue(PARTNER))] == ["second"]


async def test_an_unconfirmed_publish_may_have_landed(fake: MemoryRelay) -> None:
    """``lands=True``: the publish raises RELAY_UNCONFIRMED yet the message is in its queue."""
    fake.fail_publish("RELAY_UNCONFIRMED", exchange=fake.names.inbound, lands=True)
    await publish(fake, "outbound-unaffected")
    with pytest.raises(RelayError, match="not confirmed"):
        await fake.publish(fake.names.inbound, f"{PARTNER}.maa.request", b"x", message_id="in")
    assert [m.message_id for m in fake.messages(fake.names.inbound)] == ["in"]


async def test_a_broker_gone_is_not_ready_refuses_calls_and_takes_back_deliveries(
    fake: MemoryRelay,
) -> None:
    """``disconnect``: not ready, publish raises, unsettled deliveries return; ``reconnect`` resumes."""
    inbox = Inbox()
    queue = fake.names.outbound_queue(PARTNER)
    await fake.consume(queue, inbox)
    await publish(fake, "m")
    held = await inbox.next()
    fake.disconnect()
    assert not fake.ready
    with pytest.raises(RelayError) as caught:
        await publish(fake, "n")
    assert caught.value.code == "RELAY_UNAVAILABLE"
    assert fake.unacked(queue) == 0
    assert [m.message_id for m in fake.messages(queue)] == ["m"]
    await held.ack()  # too late: the broker took it back, nothing happens
    fake.reconnect()
    again = await inbox.next(timeout=1)
    assert (again.message_id, again.redelivered) == ("m", True)


async def test_advance_lets_the_delay_queues_ttl_pass_at_once(fake: MemoryRelay) -> None:
    """A message in the 60 s delay queue is back in its partner queue after ``advance(60)``."""
    queue = fake.names.outbound_queue(PARTNER)
    await fake.publish(fake.names.retry, f"60s.{PARTNER}", b"x", message_id="slow")
    await fake.advance(59)
    assert fake.messages(queue) == []
    await fake.advance(1)
    assert [m.message_id for m in fake.messages(queue)] == ["slow"]
    assert fake.messages(fake.names.retry_queue(60)) == []


async def test_the_inspection_helpers_show_unacked_and_dead_letters(fake: MemoryRelay) -> None:
    """``unacked`` counts deliveries held, ``dead_letters`` the dead queue, ``published`` all."""
    inbox = Inbox()
    queue = fake.names.outbound_queue(PARTNER)
    await fake.consume(queue, inbox)
    await publish(fake, "a")
    got = await inbox.next()
    assert fake.unacked(queue) == 1
    await got.reject()
    assert fake.unacked(queue) == 0
    assert [m.message_id for m in fake.dead_letters()] == ["a"]
    assert [(ex, key) for ex, key, _ in fake.published] == [(fake.names.outbound, PARTNER)]
    with pytest.raises(RuntimeError):
        await got.ack()
