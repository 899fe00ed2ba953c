"""The broker objects of one administration: names, arguments, the definitions document.

Names follow the contract in docs/architecture.md, each prefixed with the
administration's ``broker.prefix``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

#: the delay queues' fixed TTLs in seconds, about twice apart, so that a jittered backoff
#: spreads retries over neighbouring queues (see ``delay_for``). Each quorum queue costs the
#: broker file handles (three reserved each on RabbitMQ 3.10): the ladder stays short.
DELAYS: tuple[int, ...] = (1, 2, 4, 8, 15, 30, 60, 120, 240, 300, 600, 900, 1800, 3600)


#: after this many redeliveries of one message (e.g. the gateway crashing on it) the broker
#: dead-letters it: a poison message is never redelivered forever
DELIVERY_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Names:
    """The broker object names of one administration."""

    prefix: str = ""

    def _n(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def outbound(self) -> str:
        return self._n("maagw.outbound")

    def outbound_queue(self, partner: str) -> str:
        return self._n(f"maagw.outbound.{partner}")

    @property
    def retry(self) -> str:
        return self._n("maagw.retry")

    def retry_queue(self, delay: int) -> str:
        return self._n(f"maagw.retry.{delay}s")

    @property
    def requeue(self) -> str:
        return self._n("maagw.requeue")

    @property
    def inbound(self) -> str:
        return self._n("maagw.inbound")

    @property
    def events(self) -> str:
        return self._n("maagw.events")

    @property
    def dlx(self) -> str:
        return self._n("maagw.dlx")

    @property
    def dead(self) -> str:
        return self._n("maagw.dead")


def quorum_args(names: Names, **extra: Any) -> dict[str, Any]:
    """Arguments of every quorum queue: at-least-once dead-lettering to the DLX."""
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dlx,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    args.update(extra)
    return args


def topology(names: Names, partners: Iterable[str], vhost: str = "/") -> dict[str, Any]:
    """The whole topology as a RabbitMQ definitions document (exchanges, queues, bindings).

    Every object names ``vhost``: ``rabbitmqctl import_definitions`` creates it there.
    """
    exchanges = [
        (names.outbound, "direct"),
        (names.retry, "topic"),
        (names.requeue, "topic"),
        (names.inbound, "topic"),
        (names.events, "topic"),
        (names.dlx, "fanout"),
    ]
    queues: list[tuple[str, dict[str, Any]]] = []
    bindings: list[tuple[str, str, str]] = []
    for partner in sorted(partners):
        q = names.outbound_queue(partner)
        queues.append((q, quorum_args(names, **{"x-delivery-limit": DELIVERY_LIMIT})))
        bindings.append((names.outbound, q, partner))
        bindings.append((names.requeue, q, f"*.{partner}"))
    for delay in DELAYS:
        q = names.retry_queue(delay)
        args = quorum_args(names, **{"x-message-ttl": delay * 1000})
        args["x-dead-letter-exchange"] = names.requeue
        queues.append((q, args))
        bindings.append((names.retry, q, f"{delay}s.*"))
    queues.append((names.inbound, quorum_args(names)))
    bindings.append((names.inbound, names.inbound, "#"))
    queues.append((names.events, quorum_args(names)))
    bindings.append((names.events, names.events, "#"))
    dead_args = {"x-queue-type": "quorum"}
    queues.append((names.dead, dead_args))
    bindings.append((names.dlx, names.dead, ""))
    return {
        "exchanges": [
            {
                "name": n,
                "vhost": vhost,
                "type": t,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for n, t in exchanges
        ],
        "queues": [
            {"name": n, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": a}
            for n, a in queues
        ],
        "bindings": [
            {
                "source": s,
                "vhost": vhost,
                "destination": d,
                "destination_type": "queue",
                "routing_key": k,
                "arguments": {},
            }
            for s, d, k in bindings
        ],
    }


def url_user(url: str) -> str:
    """The user name in an AMQP URL (``guest`` when the URL names none)."""
    parsed = urlsplit(url)
    return unquote(parsed.username) if parsed.username else "guest"


def url_vhost(url: str) -> str:
    """The vhost an AMQP URL names: its path, percent-decoded; ``/`` when it has none."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"
