"""A message consumed from a queue, and the relay that hands it out, as the pipelines see them.

The broker (``relay.broker.Relay``) and the in-memory fake (``relay.memory.MemoryRelay``)
both hand out ``IncomingMessage``; settling one (``ack``, ``nack``, ``reject``) is the
pipeline's last word on it. ``RelayPort`` is what the pipelines and the service call
of a relay, so that either can be handed to them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from gateway.relay.topology import Names


class IncomingMessage(Protocol):
    """One consumed message: its properties, headers and body, and how to settle it."""

    @property
    def message_id(self) -> str | None: ...

    @property
    def type(self) -> str | None:
        """The message type (the AMQP ``type`` property)."""
        ...

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def body(self) -> bytes: ...

    @property
    def redelivered(self) -> bool:
        """Whether the message was delivered before (and given back, not settled)."""
        ...

    @property
    def processed(self) -> bool:
        """Whether it was settled (acked, nacked or rejected) already."""
        ...

    async def ack(self) -> None:
        """Done with: the broker forgets it."""

    async def nack(self, *, requeue: bool = True) -> None:
        """Give it back to its queue (or, without ``requeue``, to the dead-letter exchange)."""

    async def reject(self) -> None:
        """Refuse it for good: to the queue's dead-letter exchange (``nack`` without requeue)."""


Handler = Callable[[IncomingMessage], Awaitable[None]]


class RelayPort(Protocol):
    """What the gateway calls of a relay: the broker's or the in-memory fake."""

    names: Names
    confirm_timeout: float

    @property
    def ready(self) -> bool: ...

    async def connect(self, partners: Iterable[str]) -> None: ...

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
    ) -> None: ...

    async def publish_event(self, partner: str, status: str, event: Mapping[str, Any]) -> None: ...

    async def add_partners(self, partners: Iterable[str]) -> None: ...

    def consumes(self, queue_name: str) -> bool: ...

    async def consume(self, queue_name: str, handler: Handler) -> None: ...

    async def take_dead_copy(self, dead_id: int) -> bool: ...

    async def stop_consuming(self) -> None: ...

    async def close(self) -> None: ...
