"""An in-memory broker and a relay on it: ``Relay``'s interface, no RabbitMQ, no network.

``MemoryBroker`` holds exchanges, queues and bindings declared from the same
definitions as the real broker's (``relay.topology.topology``) and behaves as
RabbitMQ's quorum queues do where the gateway relies on it:

- routing by exchange type (direct, topic, fanout) and binding key; a publish that
  no queue takes is returned (``RELAY_RETURNED``), as a mandatory publish is;
- ``ack`` forgets a message; ``nack(requeue=True)`` gives it back to the head of its
  queue, redelivered, one more in ``x-delivery-count``; past the queue's
  ``x-delivery-limit`` returns it is dead-lettered instead (reason ``delivery_limit``);
- ``nack(requeue=False)`` and ``reject`` dead-letter it (reason ``rejected``) to the
  queue's ``x-dead-letter-exchange`` (with ``x-dead-letter-routing-key`` if set, else
  its own routing key), adding the ``x-death`` and ``x-first-death-*`` headers;
- a queue's ``x-message-ttl`` dead-letters what waited that long (reason ``expired``):
  the delay queues send their messages back to the partner queues that way;
- a consumer holds at most ``prefetch`` unsettled messages; closing the relay gives
  them back (redelivered).

Time is the event loop's clock times ``1 / time_scale`` plus what ``advance`` skipped:
``MemoryRelay(names, time_scale=0.001)`` makes the one-second delay queue one
millisecond long; ``await relay.advance(60)`` lets a minute pass at once.

Faults: ``fail_publish`` (not confirmed, nacked), ``disconnect``/``reconnect`` (the
broker gone: ``ready`` is False and every call raises ``RelayError``).
Inspection: ``messages``, ``unacked``, ``dead_letters``, ``published``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from gateway import tasks
from gateway.contract import AmqpHeader
from gateway.errors import ErrorCode, RelayError
from gateway.relay.message import Handler, RelayPort
from gateway.relay.topology import Names, topology

log = structlog.get_logger(__name__)


PublishFault = Literal[ErrorCode.RELAY_UNCONFIRMED, ErrorCode.RELAY_NACKED]


@dataclass
class QueuedMessage:
    """A message as the broker holds it: properties, headers, body, where it came from."""

    body: bytes
    message_id: str | None
    type: str | None
    correlation_id: str | None
    content_type: str | None
    headers: dict[str, Any]
    exchange: str
    routing_key: str
    #: returns (``nack`` with requeue, a closed relay) so far
    delivery_count: int = 0
    redelivered: bool = False
    #: broker time at which the queue's TTL dead-letters it
    expires_at: float | None = None


@dataclass
class _Queue:
    name: str
    arguments: dict[str, Any]
    ready: deque[QueuedMessage] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    #: consumers cancelled with deliveries unsettled (which they may still settle)
    cancelled: list[_Consumer] = field(default_factory=list)

    @property
    def ttl(self) -> float | None:
        ms = self.arguments.get("x-message-ttl")
        return None if ms is None else float(ms) / 1000

    @property
    def delivery_limit(self) -> int | None:
        limit = self.arguments.get("x-delivery-limit")
        return None if limit is None else int(limit)

    @property
    def unacked(self) -> int:
        return sum(len(c.unacked) for c in [*self.consumers, *self.cancelled])


@dataclass(eq=False)
class _Consumer:
    relay: MemoryRelay
    queue: _Queue
    handler: Handler
    prefetch: int
    unacked: set[MemoryDelivery] = field(default_factory=set)
    active: bool = True


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding key (``*`` one word, ``#`` zero or more) matches ``key``."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class MemoryBroker:
    """Exchanges, queues and bindings in memory; shared by the relays that connect to it."""

    def __init__(self, *, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, _Queue] = {}
        self.bindings: list[tuple[str, str, str]] = []
        #: every publish the broker took, in order: (exchange, routing key, message)
        self.published: list[tuple[str, str, QueuedMessage]] = []
        #: False while the broker is "down" (see ``MemoryRelay.disconnect``)
        self.up = True
        self._skipped = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def now(self) -> float:
        """Broker time in seconds (the loop's clock, scaled, plus what ``advance`` skipped)."""
        return asyncio.get_running_loop().time() / self.time_scale + self._skipped

    def declare(self, definitions: Mapping[str, Any]) -> None:
        """Declare a definitions document (``topology``); what exists already stays."""
        for ex in definitions["exchanges"]:
            self.exchanges.setdefault(ex["name"], ex["type"])
        for q in definitions["queues"]:
            if q["name"] not in self.queues:
                self.queues[q["name"]] = _Queue(q["name"], dict(q["arguments"]))
        for b in definitions["bindings"]:
            binding = (b["source"], b["destination"], b["routing_key"])
            if binding not in self.bindings:
                self.bindings.append(binding)

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        """The queues a message published to ``exchange`` with ``routing_key`` goes to."""
        kind = self.exchanges[exchange]
        names: list[str] = []
        for source, destination, key in self.bindings:
            if source != exchange or destination in names:
                continue
            if (
                kind == "fanout"
                or (kind == "direct" and key == routing_key)
                or (kind == "topic" and topic_matches(key, routing_key))
            ):
                names.append(destination)
        return [self.queues[n] for n in names]

    def enqueue(self, queue: _Queue, message: QueuedMessage) -> None:
        ttl = queue.ttl
        message.expires_at = None if ttl is None else self.now() + ttl
        queue.ready.append(message)
        self.dispatch(queue)
        if ttl is not None:
            self._arm()

    def deliver(self, exchange: str, routing_key: str, message: QueuedMessage) -> int:
        """Put a copy of ``message`` in every queue it routes to; how many took it."""
        queues = self.route(exchange, routing_key)
        for queue in queues:
            self.enqueue(queue, copy.deepcopy(message))
        return len(queues)

    def dispatch(self, queue: _Queue) -> None:
        """Hand ready messages to the queue's consumers that have room (round robin)."""
        while queue.ready and self.up:
            room = [c for c in queue.consumers if c.active and len(c.unacked) < c.prefetch]
            if not room:
                return
            consumer = min(room, key=lambda c: len(c.unacked))
            message = queue.ready.popleft()
            delivery = MemoryDelivery(self, consumer, message)
            consumer.unacked.add(delivery)
            tasks.spawn(_handle(consumer.handler, delivery), name=f"consume-{queue.name}")

    def give_back(self, queue: _Queue, message: QueuedMessage) -> None:
        """A delivery returned unsettled: to the head, unless past the delivery limit."""
        message.delivery_count += 1
        message.redelivered = True
        limit = queue.delivery_limit
        if limit is not None and message.delivery_count > limit:
            self.dead_letter(queue, message, "delivery_limit")
            return
        queue.ready.appendleft(message)
        self.dispatch(queue)

    def dead_letter(self, queue: _Queue, message: QueuedMessage, reason: str) -> None:
        """Send ``message`` to the queue's dead-letter exchange (dropped if it has none)."""
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None or dlx not in self.exchanges:
            log.debug("memory_message_dropped", queue=queue.name, reason=reason)
            return
        key = queue.arguments.get("x-dead-letter-routing-key") or message.routing_key
        headers = dict(message.headers)
        deaths = [dict(d) for d in headers.get("x-death", [])]
        for death in deaths:
            if death.get("queue") == queue.name and death.get("reason") == reason:
                death["count"] = int(death.get("count", 0)) + 1
                deaths.remove(death)
                deaths.insert(0, death)
                break
        else:
            deaths.insert(
                0,
                {
                    "count": 1,
                    "reason": reason,
                    "queue": queue.name,
                    "time": datetime.now(UTC),
                    "exchange": message.exchange,
                    "routing-keys": [message.routing_key],
                },
            )
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", message.exchange)
        headers.pop("x-delivery-count", None)
        dead = QueuedMessage(
            body=message.body,
            message_id=message.message_id,
            type=message.type,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            headers=headers,
            exchange=dlx,
            routing_key=key,
        )
        self.deliver(dlx, key, dead)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of broker time pass at once (TTLs expire), then let handlers run."""
        self._skipped += seconds
        self._expire()
        await asyncio.sleep(0)

    def _expire(self) -> None:
        now = self.now()
        for queue in list(self.queues.values()):
            if queue.ttl is None:
                continue
            while queue.ready:
                head = queue.ready[0]
                if head.expires_at is None or head.expires_at > now + 1e-9:
                    break
                queue.ready.popleft()
                self.dead_letter(queue, head, "expired")
        self._arm()

    def _arm(self) -> None:
        """Set the one timer for the next TTL expiry (quorum queues expire at the head)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        heads = [
            q.ready[0].expires_at
            for q in self.queues.values()
            if q.ready and q.ready[0].expires_at is not None
        ]
        due = [t for t in heads if t is not None]
        if not due:
            return
        wait = max(0.0, (min(due) - self.now()) * self.time_scale)
        self._timer = asyncio.get_running_loop().call_later(wait, self._expire)


async def _handle(handler: Handler, delivery: MemoryDelivery) -> None:
    await handler(delivery)


class MemoryDelivery:
    """One delivery of a queued message to a consumer: an ``IncomingMessage``."""

    def __init__(self, broker: MemoryBroker, consumer: _Consumer, message: QueuedMessage) -> None:
        self._broker = broker
        self._consumer = consumer
        self._message = message
        headers = dict(message.headers)
        if message.delivery_count:
            headers["x-delivery-count"] = message.delivery_count
        self._headers = headers
        self._redelivered = message.redelivered
        self._processed = False

    @property
    def message_id(self) -> str | None:
        return self._message.message_id

    @property
    def type(self) -> str | None:
        return self._message.type

    @property
    def correlation_id(self) -> str | None:
        return self._message.correlation_id

    @property
    def content_type(self) -> str | None:
        return self._message.content_type

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._headers

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return self._redelivered

    @property
    def processed(self) -> bool:
        return self._processed

    def _settle(self) -> bool:
        """Mark settled; False if the delivery was already given back (relay closed)."""
        if self._processed:
            raise RuntimeError("the message was settled already")
        self._processed = True
        if self not in self._consumer.unacked:
            return False
        self._consumer.unacked.discard(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            self._broker.dispatch(self._consumer.queue)

    async def nack(self, *, requeue: bool = True) -> None:
        if not self._settle():
            return
        queue = self._consumer.queue
        if requeue:
            self._broker.give_back(queue, self._message)
        else:
            self._broker.dead_letter(queue, self._message, "rejected")
            self._broker.dispatch(queue)

    async def reject(self) -> None:
        await self.nack(requeue=False)

    def give_back(self) -> None:
        """The relay closed with this delivery unsettled: the broker takes it back."""
        if self in self._consumer.unacked:
            self._consumer.unacked.discard(self)
            self._broker.give_back(self._consumer.queue, self._message)


class MemoryRelay:
    """``relay.broker.Relay``'s interface on a ``MemoryBroker`` (its own unless given one)."""

    def __init__(
        self,
        names: Names | None = None,
        *,
        broker: MemoryBroker | None = None,
        confirm_timeout: float = 10.0,
        prefetch: int = 64,
        time_scale: float = 1.0,
    ) -> None:
        self.names = names or Names()
        self.broker = broker or MemoryBroker(time_scale=time_scale)
        self.confirm_timeout = confirm_timeout
        self.prefetch = prefetch
        self._connected = False
        self._consumers: list[_Consumer] = []
        self._faults: list[_Fault] = []

    # --- the Relay interface -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while connected to a broker that is up."""
        return self._connected and self.broker.up

    async def connect(self, partners: Iterable[str]) -> None:
        """Connect and declare the topology (``RelayError`` while the broker is down)."""
        if not self.broker.up:
            raise RelayError("cannot reach the broker at memory://")
        self.broker.declare(topology(self.names, partners))
        self._connected = True
        log.info("relay_connected", broker="memory://")

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None,
        message_type: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish and "wait for the confirm"; ``RelayError`` as the real relay raises it."""
        if not self.ready or exchange not in self.broker.exchanges:
            raise RelayError("the broker is not connected")
        message = QueuedMessage(
            body=bytes(body),
            message_id=message_id,
            type=message_type,
            correlation_id=correlation_id,
            content_type=content_type,
            headers=copy.deepcopy(dict(headers or {})),
            exchange=exchange,
            routing_key=routing_key,
        )
        # the confirm is a round trip: other tasks run meanwhile
        await asyncio.sleep(0)
        fault = self._take_fault(exchange, routing_key)
        if fault is not None:
            if fault.lands:
                self.broker.deliver(exchange, routing_key, message)
            what = (
                "the broker refused the message"
                if fault.code == ErrorCode.RELAY_NACKED
                else ("publish not confirmed (injected)")
            )
            raise RelayError(f"{exchange}/{routing_key}: {what}", code=fault.code)
        if not self.broker.deliver(exchange, routing_key, message):
            raise RelayError(f"{exchange}/{routing_key}: unroutable", code=ErrorCode.RELAY_RETURNED)
        self.broker.published.append((exchange, routing_key, message))

    async def publish_event(self, partner: str, status: str, event: Mapping[str, Any]) -> None:
        """A status event for the back office, as JSON on the events exchange."""
        await self.publish(
            self.names.events,
            f"{partner}.{status}",
            json.dumps(event, separators=(",", ":"), sort_keys=True).encode(),
            message_id=str(event.get("message_id") or "") or None,
            message_type=f"event.{status}",
            correlation_id=event.get("correlation_id"),
            content_type="application/json",
        )

    async def add_partners(self, partners: Iterable[str]) -> None:
        """Declare the queues of partners added by a reload (idempotent for the rest)."""
        if not self.ready:
            raise RelayError("the broker is not connected")
        self.broker.declare(topology(self.names, partners))

    def consumes(self, queue_name: str) -> bool:
        """Whether this relay already consumes ``queue_name``."""
        return any(c.queue.name == queue_name for c in self._consumers)

    async def consume(self, queue_name: str, handler: Handler) -> None:
        """Consume a queue with manual acks, ``prefetch`` unsettled at a time."""
        if not self.ready:
            raise RelayError("the broker is not connected")
        if self.consumes(queue_name):
            return
        queue = self.broker.queues.get(queue_name)
        if queue is None:
            raise RelayError(f"cannot consume {queue_name}: no such queue")
        consumer = _Consumer(self, queue, handler, self.prefetch)
        queue.consumers.append(consumer)
        self._consumers.append(consumer)
        self.broker.dispatch(queue)

    async def take_dead_copy(self, dead_id: int) -> bool:
        """Remove the copy of dead letter ``dead_id`` from the dead queue; False if absent."""
        if not self.ready:
            raise RelayError("the broker is not connected")
        queue = self.broker.queues.get(self.names.dead)
        if queue is None:
            raise RelayError(f"cannot search {self.names.dead}: no such queue")
        wanted = str(dead_id)
        for message in list(queue.ready):
            value = message.headers.get(AmqpHeader.DEAD_ID)
            text = value.decode() if isinstance(value, bytes) else value
            if text is not None and str(text) == wanted:
                queue.ready.remove(message)
                return True
        return False

    async def stop_consuming(self) -> None:
        """Cancel every consumer: no more deliveries; unsettled ones stay ours to settle."""
        for consumer in self._consumers:
            consumer.active = False
            consumer.queue.consumers.remove(consumer)
            if consumer.unacked:
                consumer.queue.cancelled.append(consumer)
        self._consumers.clear()

    async def close(self) -> None:
        """Disconnect; unsettled messages return to their queues (redelivered)."""
        await self.stop_consuming()
        for queue in self.broker.queues.values():
            for consumer in [c for c in queue.cancelled if c.relay is self]:
                queue.cancelled.remove(consumer)
                for delivery in list(consumer.unacked):
                    delivery.give_back()
        self._connected = False

    # --- faults --------------------------------------------------------------------------

    def fail_publish(
        self,
        code: PublishFault = ErrorCode.RELAY_UNCONFIRMED,
        *,
        times: int = 1,
        exchange: str | None = None,
        lands: bool = False,
    ) -> None:
        """The next ``times`` publishes (to ``exchange``, if given) fail with ``code``.

        ``lands``: the message reaches its queues all the same (an unconfirmed publish
        may well have).
        """
        self._faults.append(_Fault(code, times, exchange, lands))

    def disconnect(self) -> None:
        """The broker goes away: not ready, calls raise, unsettled deliveries return."""
        self.broker.up = False
        for consumer in self._consumers:
            for delivery in list(consumer.unacked):
                delivery.give_back()

    def reconnect(self) -> None:
        """The broker is back; the consumers (robust, as aio-pika's) receive again."""
        self.broker.up = True
        for consumer in self._consumers:
            self.broker.dispatch(consumer.queue)

    def _take_fault(self, exchange: str, routing_key: str) -> _Fault | None:
        for fault in self._faults:
            if fault.exchange in (None, exchange):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # --- inspection ----------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of broker time pass at once (the delay queues' TTLs)."""
        await self.broker.advance(seconds)

    def messages(self, queue_name: str) -> list[QueuedMessage]:
        """The messages ready in a queue (not those delivered and unsettled), head first."""
        return list(self.broker.queues[queue_name].ready)

    def unacked(self, queue_name: str) -> int:
        """How many messages of a queue are delivered and not yet settled."""
        return self.broker.queues[queue_name].unacked

    def dead_letters(self) -> list[QueuedMessage]:
        """The messages in the dead-letter queue, oldest first."""
        return self.messages(self.names.dead)

    @property
    def published(self) -> list[tuple[str, str, QueuedMessage]]:
        """Every confirmed publish on the broker: (exchange, routing key, message)."""
        return self.broker.published


@dataclass
class _Fault:
    code: PublishFault
    times: int
    exchange: str | None
    lands: bool


_: type[RelayPort] = MemoryRelay
