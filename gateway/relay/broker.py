"""RabbitMQ: the topology, publishing with confirms, consuming partner queues.

The only module that touches aio-pika; its errors become ``RelayError`` here.
Names follow the contract in docs/architecture.md, each prefixed with the
administration's ``broker.prefix`` so that several gateways can share a broker::

    maagw.outbound            direct, routing key = partner id  (back office publishes)
    maagw.outbound.<partner>  quorum queue per partner          (gateway consumes)
    maagw.retry               topic, routing key <delay>.<partner>
    maagw.retry.<delay>       quorum queues with a fixed TTL, dead-lettering to maagw.requeue
    maagw.requeue             topic, <delay>.<partner> -> maagw.outbound.<partner>
    maagw.inbound             topic <partner>.<type> + default quorum queue bound with '#'
    maagw.events              topic <partner>.<status> + default quorum queue bound with '#'
    maagw.dlx / maagw.dead    fanout dead-letter exchange and its quorum queue

Every publish waits for the broker's confirm and is mandatory; a nack, a return
or a timeout raises ``RelayError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from gateway.contract import AmqpHeader
from gateway.errors import ErrorCode, RelayError
from gateway.relay.message import IncomingMessage
from gateway.relay.topology import Names, topology, url_user, url_vhost

log = structlog.get_logger(__name__)


Handler = Callable[[IncomingMessage], Awaitable[None]]


async def delete_topology(url: str, names: Names, partners: Iterable[str]) -> None:
    """Delete every exchange and queue of ``names`` (the demo's and the tests' clean-up).

    Missing objects are fine; the queues' messages go with them.
    """
    defs = topology(names, partners)
    connection = await aio_pika.connect(url, timeout=10)
    try:
        for q in defs["queues"]:
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(q["name"])
        for ex in defs["exchanges"]:
            channel = await connection.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(ex["name"])
    finally:
        await connection.close()


class _Incoming:
    """An aio-pika message as an ``IncomingMessage``."""

    __slots__ = ("_message",)

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message

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
        return self._message.headers or {}

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    @property
    def processed(self) -> bool:
        return bool(self._message.processed)

    async def ack(self) -> None:
        await self._message.ack()

    async def nack(self, *, requeue: bool = True) -> None:
        await self._message.nack(requeue=requeue)

    async def reject(self) -> None:
        await self._message.reject(requeue=False)


class Relay:
    """One robust connection to the broker: declare, publish with confirms, consume."""

    def __init__(
        self,
        url: str,
        names: Names,
        *,
        confirm_timeout: float = 10.0,
        prefetch: int = 64,
        connection_name: str = "maagw",
    ) -> None:
        self.url = url
        self.names = names
        self.confirm_timeout = confirm_timeout
        self.prefetch = prefetch
        self.connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []

    @property
    def ready(self) -> bool:
        """True while the connection and the publishing channel are open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self, partners: Iterable[str]) -> None:
        """Connect (robustly: reconnects by itself) and declare the topology."""
        try:
            self._connection = await aio_pika.connect_robust(
                self.url,
                client_properties={"connection_name": self.connection_name},
                timeout=10,
            )
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._declare(self._channel, topology(self.names, partners))
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
            await self.close()
            raise broker_error(exc, self.url) from exc
        log.info("relay_connected", broker=_safe_url(self.url))

    async def _declare(self, channel: AbstractChannel, defs: Mapping[str, Any]) -> None:
        types = {
            "direct": aio_pika.ExchangeType.DIRECT,
            "topic": aio_pika.ExchangeType.TOPIC,
            "fanout": aio_pika.ExchangeType.FANOUT,
        }
        for ex in defs["exchanges"]:
            self._exchanges[ex["name"]] = await channel.declare_exchange(
                ex["name"], types[ex["type"]], durable=True
            )
        queues = {}
        for q in defs["queues"]:
            queues[q["name"]] = await channel.declare_queue(
                q["name"], durable=True, arguments=q["arguments"]
            )
        for b in defs["bindings"]:
            await queues[b["destination"]].bind(self._exchanges[b["source"]], b["routing_key"])

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
        """Publish persistently and wait for the confirm; ``RelayError`` otherwise."""
        if not self.ready or exchange not in self._exchanges:
            raise RelayError("the broker is not connected")
        message = aio_pika.Message(
            body,
            message_id=message_id,
            type=message_type,
            correlation_id=correlation_id,
            content_type=content_type,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._exchanges[exchange].publish(
                message, routing_key, mandatory=True, timeout=self.confirm_timeout
            )
        except aiormq.exceptions.PublishError as exc:
            raise RelayError(
                f"{exchange}/{routing_key}: unroutable", code=ErrorCode.RELAY_RETURNED
            ) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise RelayError(
                f"{exchange}/{routing_key}: the broker refused the message",
                code=ErrorCode.RELAY_NACKED,
            ) from exc
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise RelayError(
                f"{exchange}/{routing_key}: publish not confirmed ({exc!r})",
                code=ErrorCode.RELAY_UNCONFIRMED,
            ) from exc

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
        if self._channel is None or self._channel.is_closed:
            raise RelayError("the broker is not connected")
        try:
            await self._declare(self._channel, topology(self.names, partners))
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise RelayError(f"cannot declare the queues of {', '.join(partners)}: {exc}") from exc

    def consumes(self, queue_name: str) -> bool:
        """Whether this relay already consumes ``queue_name``."""
        return any(queue.name == queue_name for queue, _ in self._consumers)

    async def consume(self, queue_name: str, handler: Handler) -> None:
        """Consume a queue with manual acks on its own channel, ``prefetch`` at a time.

        A queue already consumed is left as it is (one consumer per queue and relay).
        """
        if self._connection is None:
            raise RelayError("the broker is not connected")
        if self.consumes(queue_name):
            return
        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await channel.get_queue(queue_name, ensure=True)
            tag = await queue.consume(lambda m: handler(_Incoming(m)), no_ack=False)
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise RelayError(f"cannot consume {queue_name}: {exc!r}") from exc
        self._consumers.append((queue, tag))

    async def take_dead_copy(self, dead_id: int) -> bool:
        """Remove the copy of dead letter ``dead_id`` from the dead queue; False if absent.

        A queue cannot be searched, so its messages are taken one by one from the head
        (``basic.get``, manual acks) until the one whose ``x-maagw-dead-id`` header is
        ``dead_id``; that one is acknowledged, which removes it. Every other message
        taken is returned when the channel closes: the broker puts those back at the
        head in their order (a ``nack`` would move a quorum queue's message to its tail)
        and counts one more delivery in their ``x-delivery-count``. Nothing is
        acknowledged but the match, so nothing else can be lost. At most the messages
        queued when the search starts are looked at.
        """
        if self._connection is None:
            raise RelayError("the broker is not connected")
        wanted = str(dead_id)
        try:
            channel = await self._connection.channel()
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise RelayError(f"cannot open a channel: {exc!r}") from exc
        try:
            queue = await channel.declare_queue(self.names.dead, passive=True)
            queued = int(queue.declaration_result.message_count or 0)
            for _ in range(queued):
                message = await queue.get(no_ack=False, fail=False, timeout=self.confirm_timeout)
                if message is None:
                    break
                if _header_text((message.headers or {}).get(AmqpHeader.DEAD_ID)) == wanted:
                    await message.ack()
                    return True
            return False
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
            raise RelayError(f"cannot search {self.names.dead}: {exc!r}") from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def stop_consuming(self) -> None:
        """Cancel every consumer: the broker stops delivering, unacked messages stay ours."""
        for queue, tag in self._consumers:
            try:
                # bounded: on a lost connection a robust channel waits for the broker to return
                await asyncio.wait_for(queue.cancel(tag), timeout=self.confirm_timeout)
            except (TimeoutError, aiormq.exceptions.AMQPError, OSError, RuntimeError):
                log.warning("consumer_cancel_failed", queue=queue.name)
        self._consumers.clear()

    async def close(self) -> None:
        """Close the connection; unacknowledged messages return to their queues."""
        connection, self._connection = self._connection, None
        self._channel = None
        if connection is not None and not connection.is_closed:
            await connection.close()


def broker_error(exc: BaseException, url: str) -> RelayError:
    """What went wrong connecting to the broker, in the broker's own terms.

    A refused login (``ACCESS_REFUSED``) and a vhost the user may not open
    (``NOT_ALLOWED``: it does not exist, or the user has no permission on it) are
    configuration problems, not an unreachable broker; their codes say so.
    """
    where = _safe_url(url)
    user, vhost = url_user(url), url_vhost(url)
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return RelayError(
            f"the broker at {where} refused the login of user {user!r} (ACCESS_REFUSED): "
            "check the user name and password in broker.url",
            code=ErrorCode.RELAY_ACCESS_REFUSED,
        )
    reply = _close_reply(exc)
    if reply is not None and reply[0] in (403, 530):
        name = "ACCESS_REFUSED" if reply[0] == 403 else "NOT_ALLOWED"
        return RelayError(
            f"the broker at {where} refused ({reply[1] or name})",
            code=ErrorCode.RELAY_ACCESS_REFUSED if reply[0] == 403 else ErrorCode.RELAY_NOT_ALLOWED,
        )
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # RabbitMQ answers the Connection.Open of a vhost it will not open with a
        # connection close (530 NOT_ALLOWED), which aiormq reports as an unexpected frame
        return RelayError(
            f"the broker at {where} refused to open vhost {vhost!r} for user {user!r} "
            "(NOT_ALLOWED): the vhost does not exist or the user has no permissions on it "
            f"(rabbitmqctl add_vhost {vhost}; rabbitmqctl set_permissions -p {vhost} {user} "
            "'.*' '.*' '.*'), or broker.url names the wrong one",
            code=ErrorCode.RELAY_NOT_ALLOWED,
        )
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return RelayError(
            f"the broker at {where} refused user {user!r} access: {_text(exc)}",
            code=ErrorCode.RELAY_ACCESS_REFUSED,
        )
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return RelayError(
            f"the broker at {where} holds an object of that name with other arguments: "
            f"{_text(exc)}",
            code=ErrorCode.RELAY_PRECONDITION_FAILED,
        )
    return RelayError(f"cannot reach the broker at {where}: {exc}")


def _close_reply(exc: BaseException) -> tuple[int, str] | None:
    """(reply code, reply text) of a connection or channel the broker closed, if known."""
    if isinstance(exc, aiormq.exceptions.ConnectionClosed | aiormq.exceptions.ChannelClosed):
        args = exc.args
        if len(args) >= 2 and isinstance(args[0], int):
            return args[0], str(args[1])
    return None


def _text(exc: BaseException) -> str:
    reply = _close_reply(exc)
    return reply[1] if reply is not None else str(exc)


def _header_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _safe_url(url: str) -> str:
    """The broker URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("amqp", url)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
