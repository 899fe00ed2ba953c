"""Tests for gateway/contract.py: the back-office AMQP contract is consistent with itself."""

from __future__ import annotations

import re

from gateway.contract import (
    GATEWAY_HEADERS,
    MESSAGE_TYPES,
    REPLY_TYPES,
    REQUEST_TYPE,
    AmqpHeader,
    EventStatus,
)


def test_replies_and_the_request_are_message_types() -> None:
    """Every reply type and the request type are among the carried message types, once each."""
    assert len(set(MESSAGE_TYPES)) == len(MESSAGE_TYPES)
    assert set(MESSAGE_TYPES) >= REPLY_TYPES
    assert REQUEST_TYPE in MESSAGE_TYPES
    assert REQUEST_TYPE not in REPLY_TYPES


def test_headers_are_distinct_x_maagw_names() -> None:
    """Each AMQP header is a distinct lower-case ``x-maagw-`` name."""
    values = [h.value for h in AmqpHeader]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"x-maagw-[a-z]+(-[a-z]+)*", v) for v in values)


def test_a_replay_keeps_what_the_back_office_set() -> None:
    """The headers a replay drops are the gateway's own; format, agreement and sender survive."""
    assert set(AmqpHeader) >= GATEWAY_HEADERS
    assert {AmqpHeader.FORMAT, AmqpHeader.AGREEMENT, AmqpHeader.SENDER}.isdisjoint(GATEWAY_HEADERS)
    assert {AmqpHeader.ATTEMPT, AmqpHeader.CODE, AmqpHeader.DEAD_ID} <= GATEWAY_HEADERS


def test_event_statuses_are_snake_case_words() -> None:
    """An event's AMQP type ``event.<status>`` is made of snake_case statuses, distinct."""
    values = [s.value for s in EventStatus]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", v) for v in values)
    assert EventStatus.DELIVERED == "delivered"
