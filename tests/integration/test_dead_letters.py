"""``maagw dead``: resolved letters, replay only once unless --again, replayed letters leave the queue."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from click.testing import CliRunner, Result

from gateway.audit.log import AuditLog
from gateway.cli import main
from gateway.config.models import Settings
from gateway.relay.back_office import BackOffice
from gateway.service.gateway import Gateway
from gateway.state.sqlite import SqliteStateStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


@dataclass
class Office:
    """XA's back office on the real broker."""

    bo: BackOffice
    settings: Settings

    async def event(self, message_id: str, status: str) -> dict[str, object]:
        """Wait for the event ``status`` of ``message_id`` (others are skipped)."""
        for _ in range(10):
            for message in await self.bo.drain("maagw.events", want=1, timeout=20):
                event = json.loads(message.body)
                if (event["message_id"], event["status"]) == (message_id, status):
                    return dict(event)
        raise AssertionError(f"no {status} event for {message_id}")

    async def dead_letter(self, message_id: str) -> None:
        """Publish a message without format (refused: RELAY_NO_FORMAT) and wait until it is dead."""
        await self.bo.send("XB", REQUEST, message_id=message_id, headers={"x-maagw-format": ""})
        await self.event(message_id, "rejected")


@pytest.fixture
async def office(pair: dict[str, Settings]) -> AsyncIterator[Office]:
    """XA's back office connected to the broker."""
    connection = await aio_pika.connect_robust(pair["XA"].broker.url)
    try:
        yield Office(await BackOffice(pair["XA"], connection).open(), pair["XA"])
    finally:
        await connection.close()


async def dead(settings: Settings, *args: str) -> Result:
    """Run ``maagw dead ARGS --config XA`` in a thread (the command runs its own event loop)."""
    command = ["dead", args[0], "--config", str(settings.path), *args[1:]]
    return await asyncio.to_thread(CliRunner().invoke, main, command)


async def dead_id(settings: Settings, message_id: str) -> int:
    store = await SqliteStateStore.open(settings.state_dir / "state.db")
    try:
        [item] = [d for d in await store.dead_list(100) if d.message_id == message_id]
    finally:
        await store.close()
    return item.id


async def test_a_dead_letter_whose_message_was_delivered_later_shows_as_resolved(
    pair: dict[str, Settings], office: Office
) -> None:
    """A dead letter whose message id was delivered afterwards is listed and shown as resolved, and replaying it needs --again."""
    xa, xb = Gateway(pair["XA"]), Gateway(pair["XB"])
    await xa.start()
    await xb.start()
    try:
        mid = str(uuid.uuid4())
        await office.dead_letter(mid)
        listed_open = await dead(pair["XA"], "list")
        await office.bo.send("XB", REQUEST, message_id=mid)
        await office.event(mid, "delivered")
    finally:
        await xa.stop()
        await xb.stop()
    ident = await dead_id(pair["XA"], mid)
    listed = await dead(pair["XA"], "list")
    shown = await dead(pair["XA"], "show", str(ident))
    replay = await dead(pair["XA"], "replay", str(ident))
    [before] = [line for line in listed_open.stdout.splitlines() if mid in line]
    [after] = [line for line in listed.stdout.splitlines() if mid in line]
    assert " open " in before
    assert " resolved " in after
    detail = json.loads(shown.stdout)
    assert detail["status"] == "resolved"
    assert isinstance(detail["delivered_audit_seq"], int)
    assert replay.exit_code == 1
    assert "DEAD_RESOLVED" in replay.stderr
    assert "--again" in replay.stderr


async def test_a_second_replay_needs_again(pair: dict[str, Settings], office: Office) -> None:
    """Replaying an already replayed letter is refused (exit 1, asks for --again); with --again it is sent once more and audited as such."""
    xa = Gateway(pair["XA"])
    await xa.start()
    mid = str(uuid.uuid4())
    try:
        await office.dead_letter(mid)
    finally:
        await xa.stop()  # the replayed copies stay in the outbound queue, unread
    ident = str(await dead_id(pair["XA"], mid))
    first = await dead(pair["XA"], "replay", ident)
    second = await dead(pair["XA"], "replay", ident)
    third = await dead(pair["XA"], "replay", ident, "--again")
    assert first.exit_code == 0, first.output
    assert (second.exit_code, second.stdout) == (1, "")
    assert second.stderr.startswith("maagw: DEAD_ALREADY_REPLAYED: ")
    assert "--again" in second.stderr
    assert third.exit_code == 0, third.output
    assert await office.bo.count(pair["XA"].name_of("maagw.outbound.XB")) == 2
    audit = await AuditLog.open(pair["XA"].audit_url, gateway_id="XA", create=False)
    try:
        replays = await audit.search(event="operator_action", message_id=mid)
    finally:
        await audit.close()
    assert [(e.code, json.loads(e.details)["again"]) for e in replays] == [
        ("DEAD_REPLAYED", False),
        ("DEAD_REPLAYED", True),
    ]


async def test_a_replayed_letter_leaves_the_dead_queue_and_the_others_stay_in_order(
    pair: dict[str, Settings], office: Office
) -> None:
    """After a replay the letter's copy is gone from the dead-letter queue; every other copy is still there, in its order."""
    xa = Gateway(pair["XA"])
    await xa.start()
    mids = [str(uuid.uuid4()) for _ in range(4)]
    try:
        for mid in mids:  # one after the other: the dead queue's order is known
            await office.dead_letter(mid)
    finally:
        await xa.stop()
    replayed = await dead(pair["XA"], "replay", str(await dead_id(pair["XA"], mids[2])))
    assert replayed.exit_code == 0, replayed.output
    assert "its copy left the dead-letter queue" in replayed.stdout
    left = await office.bo.drain("maagw.dead", want=3, idle=1.0)
    assert [m.message_id for m in left] == [mids[0], mids[1], mids[3]]
    assert [m.body for m in left] == [REQUEST] * 3
