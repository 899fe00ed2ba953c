"""A message consumed from a queue, as the pipelines see it, whatever the broker.

The broker (``relay.broker``) and the in-memory fake (``relay.memory``) hand these
out; settling one (``ack``, ``nack``, ``reject``) is the pipeline's last word on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


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
    def processed(self) -> bool:
        """Whether it was settled (acked, nacked or rejected) already."""
        ...

    async def ack(self) -> None:
        """Done with: the broker forgets it."""

    async def nack(self, *, requeue: bool = True) -> None:
        """Give it back to its queue (or, without ``requeue``, to the dead-letter exchange)."""
