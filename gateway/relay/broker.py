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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from yarl import URL

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


class NodeListConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, moving on to the next node of a cluster when one fails.

    aio-pika reconnects to one URL only (mosquito/aio-pika#141). Everything else is
    its own: on the new connection its robust channels reopen with their QoS, redeclare
    the exchanges, queues and bindings declared through them and consume again. This
    class only chooses the URL of each attempt and the pause after a failed one:
    aio-pika reports every lost connection and every failed attempt to
    ``_on_connection_close``, so that is where the next node is chosen, in turn from
    the one after the node lost, and where the pause doubles (``min_delay`` up to
    ``max_delay``; aio-pika makes the first attempt after a loss at once). A
    connection made resets the pause. The switches are logged as warnings naming the node, without
    its password.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        first: int = 0,
        min_delay: float = 1.0,
        max_delay: float = 30.0,
        **kwargs: Any,
    ) -> None:
        if not nodes:
            raise ValueError("no broker node")
        self.nodes = tuple(nodes)
        self.node = first % len(self.nodes)
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._failures = 0
        self._was_connected = False
        #: connected and restored (aio-pika sets ``connected`` before the channels are back)
        self._up = False
        super().__init__(URL(self.nodes[self.node]), **kwargs)
        self.reconnect_interval = min_delay

    @property
    def restored(self) -> bool:
        """Connected to a node and the channels, topology and consumers back on it."""
        return self._up and self.connected.is_set()

    @property
    def node_url(self) -> str:
        """The node connected (or tried next), without its password."""
        return _safe_url(self.nodes[self.node])

    def _advance(self) -> None:
        self.node = next_node(self.node, len(self.nodes))
        self.url = URL(self.nodes[self.node])

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        lost, self._up = self._up, False
        gone = self.node_url
        if not (self._close_called or self.is_closed):
            if not lost:
                self._failures += 1
                self.reconnect_interval = backoff(self._failures, self.min_delay, self.max_delay)
            self._advance()
            if lost:
                log.warning("relay_connection_lost", broker=gone, next=self.node_url)
            elif self._was_connected:
                log.warning(
                    "relay_node_unreachable",
                    broker=gone,
                    next=self.node_url,
                    retry_in=self.reconnect_interval,
                )
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        if self._was_connected:
            log.warning("relay_reconnected", broker=self.node_url)
        self._was_connected = self._up = True
        self._failures = 0
        self.reconnect_interval = self.min_delay


def next_node(current: int, count: int) -> int:
    """The node tried after ``current`` among ``count``: the next one, round the list."""
    return (current + 1) % count


def backoff(failures: int, min_delay: float, max_delay: float) -> float:
    """The pause after the ``failures``-th failed attempt in a row: doubling, capped."""
    return float(min(max_delay, min_delay * 2 ** max(0, failures - 1)))


async def connect_nodes(
    nodes: Sequence[str],
    *,
    timeout: float = 10.0,
    min_delay: float = 1.0,
    max_delay: float = 30.0,
    connection_name: str | None = None,
) -> NodeListConnection:
    """A robust connection to the first node of ``nodes`` that answers, in order.

    Raises ``RelayError`` when none does: a refusal (login, vhost) rather than the
    last node's silence when some node refused.
    """
    errors: list[RelayError] = []
    for first, url in enumerate(nodes):
        connection = NodeListConnection(
            nodes,
            first=first,
            min_delay=min_delay,
            max_delay=max_delay,
            **(
                {"client_properties": {"connection_name": connection_name}}
                if connection_name
                else {}
            ),
        )
        try:
            await connection.connect(timeout=timeout)
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
            await connection.close()
            errors.append(broker_error(exc, url))
            if len(nodes) > 1:
                log.warning("relay_node_unreachable", broker=_safe_url(url), reason=str(exc))
            continue
        return connection
    refused = [e for e in errors if e.code != ErrorCode.RELAY_UNAVAILABLE]
    if refused or len(errors) == 1:
        raise (refused or errors)[0]
    raise RelayError("cannot reach any broker node: " + "; ".join(e.reason for e in errors))


class Relay:
    """One robust connection to the broker: declare, publish with confirms, consume.

    ``url`` is one node's URL or a cluster's nodes in order (``NodeListConnection``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        names: Names,
        *,
        confirm_timeout: float = 10.0,
        prefetch: int = 64,
        connection_name: str = "maagw",
        reconnect_min_seconds: float = 1.0,
        reconnect_max_seconds: float = 30.0,
    ) -> None:
        self.urls = (url,) if isinstance(url, str) else tuple(url)
        self.names = names
        self.confirm_timeout = confirm_timeout
        self.prefetch = prefetch
        self.connection_name = connection_name
        self.reconnect_min_seconds = reconnect_min_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self._connection: NodeListConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []

    @property
    def ready(self) -> bool:
        """True while a node is connected, all restored on it, and the publishing channel open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._connection.restored
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self, partners: Iterable[str]) -> None:
        """Connect to the first node that answers and declare the topology.

        The connection is robust: lost, it is made again, to the next node
        (``NodeListConnection``), and the channels, topology and consumers come back.
        """
        self._connection = await connect_nodes(
            self.urls,
            timeout=10,
            min_delay=self.reconnect_min_seconds,
            max_delay=self.reconnect_max_seconds,
            connection_name=self.connection_name,
        )
        try:
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._declare(self._channel, topology(self.names, partners))
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
            node = self._connection.nodes[self._connection.node]
            await self.close()
            raise broker_error(exc, node) from exc
        log.info("relay_connected", broker=self._connection.node_url)

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

            async def on_message(message: AbstractIncomingMessage) -> None:
                await handler(_Incoming(message))

            tag = await queue.consume(on_message, no_ack=False)
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
                async with asyncio.timeout(self.confirm_timeout):
                    await queue.cancel(tag)
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
