"""Start-up: both listeners bound before the preload and the broker; broker refusals named."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from gateway.config.models import Settings
from gateway.errors import ConfigError, RelayError
from gateway.relay.broker import Relay
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


class Tripwire:
    """A TCP listener that only counts who connects (stands where the broker would be)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@pytest.fixture
async def tripwire() -> AsyncIterator[Tripwire]:
    """A fake broker address that records any connection attempt."""
    wire = Tripwire()
    server = await asyncio.start_server(wire._accept, "127.0.0.1", 0)
    wire.port = server.sockets[0].getsockname()[1]
    try:
        yield wire
    finally:
        server.close()
        await server.wait_closed()


def _with(settings: Settings, *, section: str, port: int, broker_port: int) -> Settings:
    """``settings`` with ``[section] port``, the schema preload on and the broker moved."""
    listen = getattr(settings, section).model_copy(update={"port": port})
    broker = settings.broker.model_copy(
        update={"url": f"amqp://guest:guest@127.0.0.1:{broker_port}/"}
    )
    return settings.model_copy(update={section: listen, "preload_schemas": True, "broker": broker})


@pytest.mark.parametrize("section", ["partner_api", "admin"])
async def test_a_port_in_use_fails_before_the_preload_and_the_broker(
    pair: dict[str, Settings], busy_port: int, tripwire: Tripwire, section: str
) -> None:
    """A listener port in use is CONFIG_PORT_IN_USE naming the setting, raised before any schema is built or the broker is called."""
    settings = _with(pair["XB"], section=section, port=busy_port, broker_port=tripwire.port)
    gateway = Gateway(settings)
    with structlog.testing.capture_logs() as logs, pytest.raises(ConfigError) as caught:
        await gateway.start()
    assert caught.value.code == "CONFIG_PORT_IN_USE"
    assert f"[{section}] 127.0.0.1:{busy_port}" in caught.value.reason
    assert not [e for e in logs if e["event"] in ("schemas_preloading", "schemas_preloaded")]
    assert tripwire.connections == 0


async def test_maagw_serve_with_a_port_in_use_exits_2_with_one_line(
    pair: dict[str, Settings], busy_port: int, tripwire: Tripwire
) -> None:
    """``maagw serve`` on a partner port in use exits 2 with one line on stderr, no traceback, and never calls the broker."""
    env = dict(
        os.environ,
        MAAGW_PARTNER_API_PORT=str(busy_port),
        MAAGW_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{tripwire.port}/",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--log-format",
        "json",
        "serve",
        "--config",
        str(pair["XB"].path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert lines == [
        f"maagw: CONFIG_PORT_IN_USE: [partner_api] 127.0.0.1:{busy_port}: "
        "address already in use (another process listens there)"
    ]
    assert tripwire.connections == 0


async def test_listeners_are_bound_before_the_logged_preload_and_the_broker(
    pair: dict[str, Settings],
) -> None:
    """With preload_schemas on, start-up logs the bound listeners, then the preload (with its duration), then the broker connection."""
    settings = pair["XB"].model_copy(update={"preload_schemas": True})
    gateway = Gateway(settings)
    with structlog.testing.capture_logs() as logs:
        await gateway.start()
    try:
        order = [
            e["event"]
            for e in logs
            if e["event"]
            in (
                "listeners_bound",
                "schemas_preloading",
                "schemas_preloaded",
                "relay_connected",
                "gateway_started",
            )
        ]
        assert order == [
            "listeners_bound",
            "schemas_preloading",
            "schemas_preloaded",
            "relay_connected",
            "gateway_started",
        ]
        [done] = [e for e in logs if e["event"] == "schemas_preloaded"]
        assert isinstance(done["seconds"], float)
        assert "ncts-p5-xml" in done["adapters"]
    finally:
        await gateway.stop()


def _missing_vhost() -> str:
    return f"maagw-missing-{os.urandom(4).hex()}"


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        (
            "amqp://guest:not-the-password@127.0.0.1:5672/",
            "RELAY_ACCESS_REFUSED",
            ("ACCESS_REFUSED", "'guest'", "password"),
        ),
        (
            f"amqp://guest:guest@127.0.0.1:5672/{_missing_vhost()}",
            "RELAY_NOT_ALLOWED",
            ("NOT_ALLOWED", "vhost 'maagw-missing-", "rabbitmqctl add_vhost"),
        ),
    ],
)
async def test_a_broker_refusal_is_named_not_called_unreachable(
    rabbitmq: str, url: str, code: str, words: tuple[str, ...]
) -> None:
    """A wrong password or a vhost the user cannot open is reported with the broker's own refusal, not as an unreachable broker."""
    relay = Relay(url, Names("test-refusal."))
    with pytest.raises(RelayError) as caught:
        await relay.connect(["XB"])
    assert caught.value.code == code
    for word in words:
        assert word in caught.value.reason
    assert "not-the-password" not in caught.value.reason


async def test_maagw_serve_with_a_wrong_password_says_so(pair: dict[str, Settings]) -> None:
    """``maagw serve`` with a refused login exits 2 naming ACCESS_REFUSED, without the advice to start RabbitMQ."""
    env = dict(os.environ, MAAGW_BROKER_URL="amqp://guest:wrong-password@127.0.0.1:5672/")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--log-format",
        "json",
        "serve",
        "--config",
        str(pair["XB"].path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    last = err.decode().strip().splitlines()[-1]
    assert proc.returncode == 2
    assert last.startswith("maagw: RELAY_ACCESS_REFUSED: ")
    assert "ACCESS_REFUSED" in last
    assert "start RabbitMQ" not in last
    assert "wrong-password" not in err.decode()


async def test_stop_is_bounded_when_the_broker_connection_is_gone(
    pair: dict[str, Settings],
) -> None:
    """A gateway whose broker connection is gone still stops: cancelling its consumers waits at most the confirm timeout."""
    broker = pair["XB"].broker.model_copy(update={"confirm_timeout": 1.0})
    gateway = Gateway(pair["XB"].model_copy(update={"broker": broker}))
    await gateway.start()
    await gateway.runtime.relay.close()
    await asyncio.wait_for(gateway.stop(), timeout=30)
