"""Tests for gateway/relay/broker.py without a broker: the order of the nodes and the pauses."""

from __future__ import annotations

import asyncio
import socket

import pytest
from structlog.testing import capture_logs

from gateway.errors import ErrorCode, RelayError
from gateway.relay.broker import NodeListConnection, backoff, connect_nodes, next_node


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _failed() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(ConnectionRefusedError("refused"))
    return future


@pytest.mark.parametrize(
    ("current", "count", "expected"), [(0, 1, 0), (0, 3, 1), (1, 3, 2), (2, 3, 0)]
)
def test_the_next_node_is_the_one_after_round_the_list(
    current: int, count: int, expected: int
) -> None:
    """After node i comes node i + 1, and after the last the first."""
    assert next_node(current, count) == expected


def test_the_pause_doubles_up_to_the_maximum() -> None:
    """Failed attempts in a row wait 1, 2, 4 … seconds, never more than the maximum."""
    assert [backoff(n, 1.0, 30.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_a_lost_node_is_followed_by_the_next_then_the_pause_grows() -> None:
    """Losing node 1 moves to node 2 at once; failed attempts move on round the list, pausing longer each time."""
    nodes = [
        "amqp://gw:secret@node-1:5672/",
        "amqp://gw:secret@node-2:5672/",
        "amqp://gw:secret@node-3:5672/",
    ]
    connection = NodeListConnection(nodes, min_delay=0.5, max_delay=2.0)
    try:
        connection._up = connection._was_connected = True  # as if connected to node 1
        with capture_logs() as logs:
            await connection._on_connection_close(_failed())
            assert str(connection.url).startswith("amqp://gw:secret@node-2")
            pauses = []
            for _ in range(4):
                await connection._on_connection_close(_failed())
                pauses.append(connection.reconnect_interval)
        assert connection.node == 2  # node 2 failed, then 3, 1, 2: next is 3
        assert pauses == [0.5, 1.0, 2.0, 2.0]
        events = [(e["event"], e["broker"]) for e in logs]
        assert events[0] == ("relay_connection_lost", "amqp://gw:***@node-1:5672/")
        assert [e for e, _ in events[1:]] == ["relay_node_unreachable"] * 4
        assert all("secret" not in str(e) for e in logs)
    finally:
        await connection.close()


async def test_start_fails_with_every_node_named_when_none_answers() -> None:
    """With no node reachable, connecting fails with RELAY_UNAVAILABLE naming each node, no password."""
    nodes = [f"amqp://gw:secret@127.0.0.1:{_closed_port()}/" for _ in range(2)]
    with pytest.raises(RelayError) as err:
        await connect_nodes(nodes, timeout=2)
    assert err.value.code == ErrorCode.RELAY_UNAVAILABLE
    assert "any broker node" in str(err.value)
    assert all(n.split("@")[1] in str(err.value) for n in nodes)
    assert "secret" not in str(err.value)
