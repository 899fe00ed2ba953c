"""A list of broker nodes on the real RabbitMQ: the first reachable is used, a lost one is left for the next."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config.models import Settings
from gateway.relay.back_office import open_office
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from maagw_testing.broker import close_broker_connections, delete_topology, provision_pair

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _with_nodes(settings: Settings, *urls: str, min_delay: float = 1.0) -> Settings:
    broker = settings.broker.model_copy(
        update={"url": tuple(urls), "reconnect_min_seconds": min_delay}
    )
    return settings.model_copy(update={"broker": broker})


async def _flows(xa: Settings, xb: Settings) -> None:
    """One message from XA's back office arrives once at XB's."""
    office_a, office_b = await open_office(xa), await open_office(xb)
    try:
        mid = f"nodes-{uuid.uuid4().hex[:12]}"
        await office_a.send("XB", REQUEST, message_id=mid)
        got = await office_b.drain("maagw.inbound", want=1, timeout=30, idle=1.0)
        assert [m.message_id for m in got] == [mid]
    finally:
        await office_a.connection.close()
        await office_b.connection.close()


async def test_first_node_down_the_gateway_uses_the_second(
    pair: dict[str, Settings], rabbitmq: str
) -> None:
    """With an unreachable first node, both gateways and back offices connect to the second; a message flows."""
    down = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    xa_s, xb_s = (_with_nodes(pair[g], down, rabbitmq) for g in ("XA", "XB"))
    xa, xb = Gateway(xa_s), Gateway(xb_s)
    with capture_logs() as logs:
        await xa.start()
    try:
        await xb.start()
        assert xa.runtime.relay.ready and xb.runtime.relay.ready
        connected = [e for e in logs if e["event"] == "relay_connected"]
        assert [e["broker"] for e in connected] == ["amqp://guest:***@127.0.0.1:5672/"]
        unreachable = [e for e in logs if e["event"] == "relay_node_unreachable"]
        assert [e["broker"] for e in unreachable] == [down.replace(":guest@", ":***@")]
        await _flows(xa_s, xb_s)
    finally:
        await xa.stop()
        await xb.stop()


async def test_a_lost_node_is_replaced_by_the_next_and_consuming_resumes(
    pair: dict[str, Settings], rabbitmq: str
) -> None:
    """XA's connection closed by the broker: not ready, then connected to the next live node, consuming again."""
    assert "127.0.0.1" in rabbitmq
    other_name = rabbitmq.replace("127.0.0.1", "localhost")  # the same node by another name
    down = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    xa_s = _with_nodes(pair["XA"], rabbitmq, down, other_name, min_delay=1.0)
    xa, xb = Gateway(xa_s), Gateway(pair["XB"])
    await xa.start()
    await xb.start()
    try:
        await _flows(xa_s, pair["XB"])
        relay = xa.runtime.relay
        with capture_logs() as logs:
            closed = await asyncio.to_thread(
                close_broker_connections, f"maagw-{xa_s.broker.prefix}XA"
            )
            assert closed == 1
            saw_not_ready = False
            for _ in range(300):
                saw_not_ready = saw_not_ready or not relay.ready
                if saw_not_ready and relay.ready:
                    break
                await asyncio.sleep(0.02)
        assert saw_not_ready and relay.ready
        switches = [(e["event"], e["broker"]) for e in logs if e["event"].startswith("relay_")]
        safe = [u.replace(":guest@", ":***@") for u in (rabbitmq, down, other_name)]
        assert switches == [
            ("relay_connection_lost", safe[0]),
            ("relay_node_unreachable", safe[1]),
            ("relay_reconnected", safe[2]),
        ]
        assert all(e["log_level"] == "warning" for e in logs if e["event"] in dict(switches))
        # the outbound consumer, its QoS and the topology came back on the new connection
        await _flows(xa_s, pair["XB"])
    finally:
        await xa.stop()
        await xb.stop()


def _cluster() -> list[tuple[str, str]]:
    """(node name, AMQP URL) of each node of ``$MAAGW_TEST_CLUSTER``; skips without one."""
    spec = os.environ.get("MAAGW_TEST_CLUSTER", "")
    if not spec:
        pytest.skip(
            "no RabbitMQ cluster: deploy/rabbitmq/local-cluster.sh start, MAAGW_TEST_CLUSTER"
        )
    return [
        (node.strip(), url.strip())
        for node, url in (item.split("=", 1) for item in spec.split(","))
    ]


def _rabbitmqctl(node: str, *args: str) -> None:
    subprocess.run(["rabbitmqctl", "-n", node, "-q", *args], check=True, timeout=120)


async def test_the_loss_of_the_connected_cluster_node_moves_the_gateway_to_the_next(
    tmp_path: Path,
) -> None:
    """On a 3-node cluster, stopping the node XA is connected to moves XA to another node; messages flow."""
    cluster = _cluster()
    urls = [url for _, url in cluster]
    settings = {g: _with_nodes(s, *urls) for g, s in provision_pair(tmp_path).items()}
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xa.start()
    await xb.start()
    stopped: str | None = None
    try:
        await _flows(settings["XA"], settings["XB"])
        connection = xa.runtime.relay._connection
        assert connection is not None
        stopped = cluster[connection.node][0]
        with capture_logs() as logs:
            started = time.monotonic()
            await asyncio.to_thread(_rabbitmqctl, stopped, "stop_app")
            for _ in range(600):
                if xa.runtime.relay.ready and cluster[connection.node][0] != stopped:
                    break
                await asyncio.sleep(0.05)
        assert xa.runtime.relay.ready
        assert cluster[connection.node][0] != stopped
        events = [e["event"] for e in logs if e["event"].startswith("relay_")]
        took = time.monotonic() - started
        switches = [(e["event"], e["broker"]) for e in logs if "broker" in e]
        print(f"\nstopped {stopped}; XA ready on another node after {took:.1f} s: {switches}")
        assert events[0] == "relay_connection_lost" and "relay_reconnected" in events
        await _flows(settings["XA"], settings["XB"])
    finally:
        await xa.stop()
        await xb.stop()
        if stopped is not None:
            await asyncio.to_thread(_rabbitmqctl, stopped, "start_app")
        live = urls[0]
        for s in settings.values():
            await delete_topology(live, Names(s.broker.prefix), list(s.partners))
