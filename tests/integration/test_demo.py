"""``maagw demo`` on a shared broker: its own names each run, removed at the end, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from gateway.demo import run_demo
from gateway.errors import RelayError
from gateway.relay.broker import Relay, delete_topology
from gateway.relay.topology import Names, topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


async def fill(url: str, prefix: str, count: int) -> None:
    """Publish ``count`` valid XA -> XB requests to ``<prefix>maagw.outbound`` (confirmed)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{prefix}maagw.outbound")
        for start in range(0, count, 100):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            REQUEST,
                            message_id=f"junk-{uuid.uuid4()}",
                            type="maa.request",
                            headers={"x-maagw-format": "national-json"},
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key="XB",
                    )
                    for _ in range(min(100, count - start))
                )
            )
    finally:
        await connection.close()


async def existing(url: str, prefix: str, partners: list[str]) -> list[str]:
    """The exchanges and queues of ``prefix`` that exist on the broker."""
    defs = topology(Names(prefix), partners)
    found: list[str] = []
    connection = await aio_pika.connect(url)
    try:
        for q in defs["queues"]:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(q["name"], passive=True)
                found.append(q["name"])
        for ex in defs["exchanges"]:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_exchange(ex["name"], passive=True)
                found.append(ex["name"])
    finally:
        await connection.close()
    return found


async def run_names_left(url: str, run_id: str) -> list[str]:
    """Every broker object of demo run ``run_id`` that still exists."""
    return await existing(url, f"demo-{run_id}.xa.", ["XB"]) + await existing(
        url, f"demo-{run_id}.xb.", ["XA"]
    )


async def names_left_then_cleared(url: str, run_id: str) -> list[str]:
    """What is left of run ``run_id`` — deleted afterwards, so a failing test leaves nothing."""
    left = await run_names_left(url, run_id)
    await delete_topology(url, Names(f"demo-{run_id}.xa."), ["XB"])
    await delete_topology(url, Names(f"demo-{run_id}.xb."), ["XA"])
    return left


async def declare(url: str, prefix: str, partners: list[str]) -> None:
    relay = Relay(url, Names(prefix))
    await relay.connect(partners)
    await relay.close()


@pytest.fixture
async def old_names_with_junk(rabbitmq: str) -> AsyncIterator[None]:
    """1,500 messages waiting in ``xa.maagw.outbound.XB``, the old demo's fixed queue."""
    created = not await existing(rabbitmq, "xa.", ["XB"])
    await declare(rabbitmq, "xa.", ["XB"])
    await declare(rabbitmq, "xb.", ["XA"])
    await fill(rabbitmq, "xa.", 1500)
    try:
        yield
    finally:
        if created:  # ours alone: remove them; otherwise leave them to whoever made them
            await delete_topology(rabbitmq, Names("xa."), ["XB"])
            await delete_topology(rabbitmq, Names("xb."), ["XA"])


def test_the_demo_passes_with_junk_left_in_the_old_fixed_queue_names(
    rabbitmq: str, old_names_with_junk: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages left in the names earlier demos used (an interrupted run, another user) do not hold this run up."""
    assert run_demo(None, rabbitmq) is True
    assert "OK: the request reached XB and the reply reached XA" in capsys.readouterr().out


async def test_a_run_deletes_its_broker_names_at_the_end(rabbitmq: str, tmp_path: Path) -> None:
    """After a successful run none of its exchanges and queues is left; the kept state has an admin token only its owner reads."""
    run_id = uuid.uuid4().hex[:8]
    try:
        ok = await asyncio.to_thread(run_demo, tmp_path / "state", rabbitmq, run_id=run_id)
    finally:
        left = await names_left_then_cleared(rabbitmq, run_id)
    assert ok is True
    assert left == []
    for gid in ("XA", "XB"):
        token = tmp_path / "state" / gid / "admin.token"
        assert token.stat().st_mode & 0o777 == 0o600
        assert (
            'token_file = "admin.token"' in (tmp_path / "state" / gid / "gateway.toml").read_text()
        )


async def test_a_failed_run_deletes_its_broker_names_too(rabbitmq: str) -> None:
    """A run that fails (here: a queue of its name already declared with other arguments) still deletes every name it used."""
    run_id = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(rabbitmq)
    try:
        channel = await connection.channel()
        await channel.declare_queue(f"demo-{run_id}.xa.maagw.outbound.XB", durable=True)
    finally:
        await connection.close()
    try:
        with pytest.raises(RelayError) as caught:
            await asyncio.to_thread(run_demo, None, rabbitmq, run_id=run_id)
    finally:
        left = await names_left_then_cleared(rabbitmq, run_id)
    assert caught.value.code == "RELAY_PRECONDITION_FAILED"
    assert left == []


async def test_ctrl_c_during_a_run_deletes_its_broker_names(rabbitmq: str) -> None:
    """SIGINT while the demo waits (held up behind 700 messages) ends it and still deletes every name of the run."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"demo-{run_id}.xa."
    await declare(rabbitmq, prefix, ["XB"])
    await fill(rabbitmq, prefix, 700)  # past the agreement's burst: the run's request waits
    code = f"from gateway.demo import run_demo; run_demo(None, {rabbitmq!r}, run_id={run_id!r})"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        connection = await aio_pika.connect(rabbitmq)
        try:
            channel = await connection.channel()
            for _ in range(600):  # until gateway XA consumes its outbound queue
                queue = await channel.declare_queue(f"{prefix}maagw.outbound.XB", passive=True)
                if queue.declaration_result.consumer_count:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the demo's gateway XA never consumed its queue")
        finally:
            await connection.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        left = await names_left_then_cleared(rabbitmq, run_id)
    assert proc.returncode != 0
    assert left == []
