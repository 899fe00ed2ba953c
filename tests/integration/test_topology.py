"""The broker topology as the back office and the operator meet it: vhosts, passive declares."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid

import aio_pika
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config.models import Settings
from gateway.relay.broker import Relay, delete_topology
from gateway.relay.topology import Names


def ctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def topology_of(settings: Settings, *extra: str) -> dict[str, list[dict[str, object]]]:
    result = CliRunner().invoke(
        main, ["config", "topology", "--config", str(settings.path), "--no-prefix", *extra]
    )
    assert result.exit_code == 0, result.output
    defs: dict[str, list[dict[str, object]]] = json.loads(result.stdout)
    return defs


def vhosts_named(defs: dict[str, list[dict[str, object]]]) -> set[object]:
    return {item["vhost"] for kind in ("exchanges", "queues", "bindings") for item in defs[kind]}


def test_config_topology_names_the_vhost_of_the_broker_url(pair: dict[str, Settings]) -> None:
    """Without --vhost the definitions name the vhost of broker.url (percent-decoded), with --vhost the one given."""
    settings = pair["XA"]
    text = settings.path.read_text().replace(
        'url = "amqp://guest:guest@127.0.0.1:5672/"',
        'url = "amqp://guest:guest@127.0.0.1:5672/customs%2Fxa"',
    )
    settings.path.write_text(text)
    assert vhosts_named(topology_of(settings)) == {"customs/xa"}
    assert vhosts_named(topology_of(settings, "--vhost", "other")) == {"other"}


def test_config_topology_for_a_vhost_imports_into_that_vhost(
    pair: dict[str, Settings], rabbitmq: str
) -> None:
    """``maagw config topology --vhost V`` imports with rabbitmqctl into vhost V as the documented steps say."""
    vhost = f"maagw-topology-{uuid.uuid4().hex[:8]}"
    defs = topology_of(pair["XB"], "--vhost", vhost)
    ctl("add_vhost", vhost)
    try:
        # the broker node reads the file itself, as its own user: a world-readable file
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as fh:
            fh.write(json.dumps(defs))
            fh.flush()
            os.chmod(fh.name, 0o644)
            ctl("import_definitions", fh.name)
        listed: dict[str, str] = {}
        for _ in range(50):  # the import runs asynchronously
            queues = ctl("list_queues", "-p", vhost, "name", "type")
            listed = {line.split("\t")[0]: line for line in queues.splitlines()}
            if all(q["name"] in listed for q in defs["queues"]):
                break
            time.sleep(0.2)
        for q in defs["queues"]:
            assert "quorum" in listed[str(q["name"])]
        assert "maagw.outbound.XA" in listed
    finally:
        ctl("delete_vhost", vhost)


async def test_a_back_office_declares_the_gateways_queues_passively(rabbitmq: str) -> None:
    """A passive declare of the default inbound and events queues works; a plain one fails with PRECONDITION_FAILED on the dead-letter argument."""
    names = Names(f"test-bo-{uuid.uuid4().hex[:8]}.")
    relay = Relay(rabbitmq, names)
    await relay.connect(["XB"])
    await relay.close()
    connection = await aio_pika.connect(rabbitmq)
    try:
        for queue in (names.inbound, names.events):
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            assert declared.name == queue
            channel = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as caught:
                await channel.declare_queue(
                    queue, durable=True, arguments={"x-queue-type": "quorum"}
                )
            assert "x-dead-letter-exchange" in str(caught.value)
    finally:
        await connection.close()
        await delete_topology(rabbitmq, names, ["XB"])
