"""The back-office AMQP contract: message types, header names, event statuses.

What a back office publishes to ``maagw.outbound`` and reads from ``maagw.inbound``,
``maagw.events`` and ``maagw.dead`` (docs/architecture.md, *RabbitMQ contract*). The
AMQP properties ``message_id`` (the message's identity end to end), ``type`` (the
message type) and ``correlation_id`` (the request a reply answers) carry the rest.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

#: every message type the gateway carries
MESSAGE_TYPES: Final = (
    "maa.request",
    "maa.reply",
    "maa.spontaneous",
    "maa.refusal",
    "mra.aeo-status",
)
#: message types that answer a request, and so must answer a known one
REPLY_TYPES: Final = frozenset({"maa.reply", "maa.refusal"})
#: the message type whose id a later reply quotes as its correlation id
REQUEST_TYPE: Final = "maa.request"


class AmqpHeader(StrEnum):
    """The ``x-maagw-*`` AMQP headers."""

    #: (back office → gateway, and back) the adapter name of the body: ``national-json`` …
    FORMAT = "x-maagw-format"
    #: the agreement id (optional outbound: default, the one covering the message)
    AGREEMENT = "x-maagw-agreement"
    #: (inbound) the partner, from its TLS certificate
    SENDER = "x-maagw-sender"
    #: (inbound) ``sha256:<hex>`` of the signed envelope, as the receipt quotes it
    ENVELOPE_DIGEST = "x-maagw-envelope-digest"
    #: (inbound) ``true`` when an earlier publish of this id may have reached the broker
    POSSIBLE_DUPLICATE = "x-maagw-possible-duplicate"
    #: (retries) the number of the next attempt, from 1
    ATTEMPT = "x-maagw-attempt"
    #: (retries) when the gateway first took the message, seconds since the epoch
    FIRST_SEEN = "x-maagw-first-seen"
    #: (retries) the code and reason of the last failure
    LAST_ERROR = "x-maagw-last-error"
    #: (retries) how often an unexpected failure (a bug) hit this message
    INTERNAL_FAILURES = "x-maagw-internal-failures"
    #: (dead letters) the stable code of why
    CODE = "x-maagw-code"
    #: (dead letters) the reason in words
    REASON = "x-maagw-reason"
    #: (dead letters) the partner the message was for
    PARTNER = "x-maagw-partner"
    #: (dead letters) the id of the copy in the state store (``maagw dead``)
    DEAD_ID = "x-maagw-dead-id"


#: headers the gateway adds while retrying or dead-lettering: a replay drops them
GATEWAY_HEADERS: Final = frozenset(
    {
        AmqpHeader.CODE,
        AmqpHeader.REASON,
        AmqpHeader.PARTNER,
        AmqpHeader.DEAD_ID,
        AmqpHeader.ATTEMPT,
        AmqpHeader.FIRST_SEEN,
        AmqpHeader.LAST_ERROR,
        AmqpHeader.INTERNAL_FAILURES,
    }
)


class EventStatus(StrEnum):
    """The ``status`` of a back-office event (AMQP type ``event.<status>``)."""

    #: the partner's signed receipt says accepted or duplicate
    DELIVERED = "delivered"
    #: the partner says it has the message, but its receipt does not verify
    UNVERIFIED_RECEIPT = "unverified_receipt"
    #: refused by this gateway or by the partner: final
    REJECTED = "rejected"
    #: a transient failure; another attempt follows
    RETRYING = "retrying"
    #: the age limit, an error no retry can cure, a recurring bug: final
    FAILED = "failed"
