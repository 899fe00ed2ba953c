"""A back office's side of the AMQP contract, for the demo, the tests and the benchmark.

It publishes what a back office sends (``maagw.outbound``, routing key = partner id)
and reads what the gateway gives it (``maagw.inbound``, ``maagw.events``,
``maagw.dead``), with the administration's broker prefix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from gateway.config.models import Settings
from gateway.contract import AmqpHeader
from gateway.relay.broker import connect_nodes


@dataclass
class BackOffice:
    """One administration's back office: publishes outbound, reads inbound and events."""

    settings: Settings
    connection: AbstractRobustConnection
    channel: AbstractChannel = field(init=False)

    async def open(self) -> BackOffice:
        self.channel = await self.connection.channel(publisher_confirms=True)
        return self

    async def send(
        self,
        partner: str,
        body: bytes,
        *,
        message_id: str | None,
        message_type: str = "maa.request",
        fmt: str = "national-json",
        correlation_id: str | None = None,
        content_type: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``body`` for ``partner`` (persistent, confirmed)."""
        exchange = await self.channel.get_exchange(self.settings.name_of("maagw.outbound"))
        hdrs: dict[str, Any] = {AmqpHeader.FORMAT: fmt}
        hdrs.update(headers or {})
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                type=message_type,
                correlation_id=correlation_id,
                content_type=content_type,
                headers=hdrs,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=partner,
        )

    async def drain(
        self, queue_base: str, *, want: int | None = None, timeout: float = 20.0, idle: float = 1.0
    ) -> list[AbstractIncomingMessage]:
        """Take messages from one of this administration's queues until ``want`` or idle."""
        queue = await self.channel.get_queue(self.settings.name_of(queue_base))
        got: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                if want is None and got and time.monotonic() - last > idle:
                    break
                if want is not None and len(got) >= want:
                    break
                await asyncio.sleep(0.05)
                continue
            got.append(message)
            last = time.monotonic()
            if want is not None and len(got) >= want:
                # keep reading briefly so that a duplicate would be seen too
                deadline = min(deadline, time.monotonic() + idle)
        return got

    async def take(
        self,
        queue_base: str,
        wanted: Callable[[AbstractIncomingMessage], bool],
        *,
        timeout: float = 15.0,
        seen: Callable[[AbstractIncomingMessage], None] | None = None,
    ) -> AbstractIncomingMessage | None:
        """Read one of this administration's queues until a wanted message; None on timeout.

        Every message read is taken off the queue; ``seen`` hears of each one.
        """
        queue = await self.channel.get_queue(self.settings.name_of(queue_base))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            if seen is not None:
                seen(message)
            if wanted(message):
                return message
        return None

    async def count(self, queue_name: str) -> int:
        """Messages ready in ``queue_name`` (a full name)."""
        queue = await self.channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def open_office(settings: Settings) -> BackOffice:
    """A back office of ``settings``' administration on a connection of its own."""
    broker = settings.broker
    connection = await connect_nodes(
        broker.urls,
        min_delay=broker.reconnect_min_seconds,
        max_delay=broker.reconnect_max_seconds,
    )
    return await BackOffice(settings, connection).open()


async def connect_robust(url: str | Sequence[str]) -> AbstractRobustConnection:
    """A connection that reconnects by itself, to the next node of a list when one is lost.

    Several back offices may share it.
    """
    return await connect_nodes((url,) if isinstance(url, str) else url)


async def probe(url: str, *, timeout: float = 5.0) -> None:
    """Connect to the broker at ``url`` and leave; raises what the connection raised."""
    connection = await aio_pika.connect(url, timeout=timeout)
    await connection.close()
