"""Nothing lost, nothing doubled: the relay under faults the tests inject themselves (real RabbitMQ)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config.files import load_settings
from gateway.config.models import Settings
from gateway.demo import provision
from gateway.relay.back_office import BackOffice, open_office
from gateway.relay.topology import Names
from gateway.service.gateway import Gateway
from maagw_testing.broker import (
    account,
    close_broker_connections,
    collect,
    delete_topology,
    publish_many,
    start_gateway_process,
    unique_prefix,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()

#: retries every second or two: faults heal within the tests' time
FAST_RETRIES = "backoff_initial = 1.0\nbackoff_max = 2.0\nconcurrency = 16"


@pytest.fixture
async def fast_pair(tmp_path: Path, rabbitmq: str) -> Any:
    """XA and XB with quick retries and a generous rate limit (the bulk tests send thousands)."""
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    source = Path(__file__).resolve().parents[2] / "config" / "agreements" / "xa-xb-maa.toml"
    (agreements / "xa-xb-maa.toml").write_text(
        source.read_text().replace("rate_per_minute = 600", "rate_per_minute = 600000")
    )
    base = unique_prefix("relay")
    prov = provision(
        tmp_path / "gw",
        rabbitmq,
        prefixes={"XA": base + "xa.", "XB": base + "xb."},
        agreements_dir=agreements,
        extra={"delivery": FAST_RETRIES},
    )
    settings = {gid: load_settings(p.config) for gid, p in prov.items()}
    yield settings, prov
    for s in settings.values():
        await delete_topology(rabbitmq, Names(s.broker.prefix), list(s.partners))


async def _office(s: Settings) -> BackOffice:
    return await open_office(s)


async def _publish_many(office: BackOffice, n: int, tag: str) -> list[str]:
    return await publish_many(office, "XB", REQUEST, n, tag)


_collect = collect
_account = account


async def test_partner_down_for_20_seconds_loses_nothing(fast_pair: Any) -> None:
    """500 messages queued while XB is down for 20 s all arrive exactly once when it is back."""
    settings, _ = fast_pair
    xa = Gateway(settings["XA"])
    await xa.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    xb: Gateway | None = None
    try:
        ids = await _publish_many(office_a, 500, "down")
        await asyncio.sleep(20)
        xb = Gateway(settings["XB"])
        await xb.start()
        got = await _collect(office_b, set(ids), timeout=120)
        lost, dups, _ = _account(got, set(ids))
        assert not lost, f"{len(lost)} lost"
        assert not dups, f"duplicated: {dups}"
        assert len(got) == 500
    finally:
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        if xb is not None:
            await xb.stop()


async def test_broker_connections_dropped_mid_run_lose_nothing(fast_pair: Any) -> None:
    """Closing every gateway connection in the middle of 2,000 messages loses none; copies are marked."""
    settings, _ = fast_pair
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xa.start()
    await xb.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    try:
        ids = await _publish_many(office_a, 2000, "drop")
        inbound = await office_b.channel.get_queue(settings["XB"].name_of("maagw.inbound"))
        for _ in range(600):
            declared = await office_b.channel.declare_queue(inbound.name, passive=True)
            if (declared.declaration_result.message_count or 0) >= 300:
                break
            await asyncio.sleep(0.1)
        prefix = settings["XA"].broker.prefix.removesuffix("xa.")
        closed = await asyncio.to_thread(close_broker_connections, f"maagw-{prefix}")
        assert closed >= 2
        got = await _collect(office_b, set(ids), timeout=180)
        lost, dups, copies = _account(got, set(ids))
        assert not lost, f"{len(lost)} lost"
        for mid, count in dups.items():
            # one copy is the original; every further copy must carry the mark
            marked = [
                m
                for m in copies
                if m.message_id == mid and (m.headers or {}).get("x-maagw-possible-duplicate")
            ]
            assert len(marked) >= count - 1, f"{mid} arrived {count} times, {len(marked)} marked"
        print(
            f"\nconnections dropped: {closed}; delivered {len(set(m.message_id for m in got))}"
            f"/2000; duplicates: {sum(c - 1 for c in dups.values())}"
        )
        assert xa.runtime.relay.ready and xb.runtime.relay.ready
    finally:
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()


async def test_kill_9_of_the_sender_loses_and_doubles_nothing(
    fast_pair: Any, tmp_path: Path
) -> None:
    """Gateway XA killed with SIGKILL mid-run and restarted: every message arrives exactly once."""
    settings, prov = fast_pair
    xb = Gateway(settings["XB"])
    await xb.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    log = tmp_path / "xa.log"
    proc = await asyncio.to_thread(start_gateway_process, prov["XA"].config, log)
    try:
        ids = await _publish_many(office_a, 1000, "kill")
        inbound = settings["XB"].name_of("maagw.inbound")
        for _ in range(600):
            declared = await office_b.channel.declare_queue(inbound, passive=True)
            if (declared.declaration_result.message_count or 0) >= 200:
                break
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        proc = await asyncio.to_thread(start_gateway_process, prov["XA"].config, log)
        got = await _collect(office_b, set(ids), timeout=180)
        lost, dups, _ = _account(got, set(ids))
        assert not lost, f"{len(lost)} lost"
        assert not dups, f"duplicated downstream: {dups}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await office_a.channel.close()
        await office_b.channel.close()
        await xb.stop()


async def test_a_poison_message_is_dead_lettered_and_the_queue_keeps_flowing(
    fast_pair: Any,
) -> None:
    """An undecodable message lands in the dead-letter queue with its reason and an event; the next one is delivered."""
    settings, _ = fast_pair
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xa.start()
    await xb.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    try:
        poison, good = f"poison-{uuid.uuid4().hex[:8]}", f"good-{uuid.uuid4().hex[:8]}"
        await office_a.send("XB", b"{ not json", message_id=poison)
        await office_a.send("XB", REQUEST, message_id=good)
        dead = await office_a.drain("maagw.dead", want=1)
        assert [(m.message_id, m.headers["x-maagw-code"]) for m in dead] == [
            (poison, "TRANSLATE_DECODE")
        ]
        assert "x-maagw-reason" in dead[0].headers
        got = await office_b.drain("maagw.inbound", want=1)
        assert [m.message_id for m in got] == [good]
        events = [json.loads(m.body) for m in await office_a.drain("maagw.events", want=2)]
        assert {(e["message_id"], e["status"]) for e in events} == {
            (poison, "rejected"),
            (good, "delivered"),
        }
        kept = await xa.runtime.store.dead_list()
        assert [(d.message_id, d.code) for d in kept] == [(poison, "TRANSLATE_DECODE")]
        # the operator's view: list, show, replay (audited); the replayed copy dies again
        runner = CliRunner()
        config = ["--config", str(settings["XA"].path)]
        listed = await asyncio.to_thread(runner.invoke, main, ["dead", "list", *config])
        assert listed.exit_code == 0 and poison in listed.output
        shown = await asyncio.to_thread(
            runner.invoke, main, ["dead", "show", str(kept[0].id), *config]
        )
        assert json.loads(shown.output)["code"] == "TRANSLATE_DECODE"
        replayed = await asyncio.to_thread(
            runner.invoke, main, ["dead", "replay", str(kept[0].id), "--actor", "op:alice", *config]
        )
        assert replayed.exit_code == 0, replayed.output
        again = await office_a.drain("maagw.dead", want=1)
        assert [m.message_id for m in again] == [poison]
        actions = await xa.runtime.audit.search(event="operator_action")
        assert [(a.actor, a.code, a.message_id) for a in actions] == [
            ("op:alice", "DEAD_REPLAYED", poison)
        ]
    finally:
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()


def _unacked(queue: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"queue {queue} not listed")


async def test_nothing_is_acknowledged_before_the_downstream_publish_is_confirmed(
    fast_pair: Any,
) -> None:
    """While XB's publish to its back office is held unconfirmed, XA's source message stays unacknowledged."""
    settings, _ = fast_pair
    xa, xb = Gateway(settings["XA"]), Gateway(settings["XB"])
    await xa.start()
    await xb.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    release = asyncio.Event()
    entered = asyncio.Event()
    real_publish = xb.runtime.relay.publish

    async def held_publish(*args: Any, **kwargs: Any) -> None:
        entered.set()
        await release.wait()
        await real_publish(*args, **kwargs)

    xb.runtime.relay.publish = held_publish  # type: ignore[method-assign]
    try:
        mid = f"held-{uuid.uuid4().hex[:8]}"
        source = xa.runtime.relay.names.outbound_queue("XB")
        await office_a.send("XB", REQUEST, message_id=mid)
        await asyncio.wait_for(entered.wait(), 15)
        # the broker refreshes these counters every few seconds
        for _ in range(40):
            if await asyncio.to_thread(_unacked, source) == 1:
                break
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_unacked, source) == 1
        assert not await office_b.drain("maagw.inbound", timeout=0.5, idle=0.2)
        release.set()
        got = await office_b.drain("maagw.inbound", want=1)
        assert [m.message_id for m in got] == [mid]
        for _ in range(40):
            if await asyncio.to_thread(_unacked, source) == 0:
                break
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_unacked, source) == 0
    finally:
        release.set()
        await office_a.channel.close()
        await office_b.channel.close()
        await xa.stop()
        await xb.stop()


def test_the_shipped_definitions_import_into_a_real_rabbitmq(rabbitmq: str) -> None:
    """deploy/rabbitmq/definitions.json imports into a scratch vhost and creates the topology."""
    vhost = f"maagw-defs-{uuid.uuid4().hex[:8]}"
    source = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"
    defs = json.loads(source.read_text())
    for kind in ("exchanges", "queues", "bindings"):
        for item in defs[kind]:
            item["vhost"] = vhost
    defs["vhosts"] = [{"name": vhost}]

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    ctl("add_vhost", vhost)
    try:
        # the broker node reads the file itself, as its own user: a world-readable temp file
        with tempfile.NamedTemporaryFile("w", suffix=".json", dir="/tmp") as fh:
            fh.write(json.dumps(defs))
            fh.flush()
            os.chmod(fh.name, 0o644)
            ctl("import_definitions", fh.name)
        listed: dict[str, str] = {}
        for _ in range(50):  # the import runs asynchronously
            queues = ctl("list_queues", "-p", vhost, "name", "type", "arguments")
            listed = {line.split("\t")[0]: line for line in queues.splitlines()}
            if all(q["name"] in listed for q in defs["queues"]):
                break
            time.sleep(0.2)
        for q in defs["queues"]:
            assert q["name"] in listed
            assert "quorum" in listed[q["name"]]
        assert "at-least-once" in listed["maagw.outbound.XB"]
        exchanges = ctl("list_exchanges", "-p", vhost, "name", "type")
        for ex in defs["exchanges"]:
            assert f"{ex['name']}\t{ex['type']}" in exchanges
    finally:
        ctl("delete_vhost", vhost)


async def test_sigterm_finishes_in_flight_work_and_loses_nothing(
    fast_pair: Any, tmp_path: Path
) -> None:
    """SIGTERM mid-run: the sender exits cleanly within its bound; after a restart every message arrives once."""
    settings, prov = fast_pair
    xb = Gateway(settings["XB"])
    await xb.start()
    office_a, office_b = await _office(settings["XA"]), await _office(settings["XB"])
    log = tmp_path / "xa.log"
    proc = await asyncio.to_thread(start_gateway_process, prov["XA"].config, log)
    try:
        ids = await _publish_many(office_a, 600, "term")
        inbound = settings["XB"].name_of("maagw.inbound")
        for _ in range(600):
            declared = await office_b.channel.declare_queue(inbound, passive=True)
            if (declared.declaration_result.message_count or 0) >= 100:
                break
            await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        took = asyncio.get_running_loop().time() - started
        assert code == 0, log.read_text()[-2000:]
        assert took < 20
        assert b"gateway_stopped" in log.read_bytes()
        proc = await asyncio.to_thread(start_gateway_process, prov["XA"].config, log)
        got = await _collect(office_b, set(ids), timeout=120)
        lost, dups, _ = _account(got, set(ids))
        assert not lost, f"{len(lost)} lost"
        assert not dups, f"duplicated downstream: {dups}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await office_a.channel.close()
        await office_b.channel.close()
        await xb.stop()


async def test_without_the_broker_the_partner_api_answers_503_and_accepts_nothing(
    fast_pair: Any, tmp_path: Path
) -> None:
    """While XB's broker connection is down XB answers 503 with Retry-After; once it is back the same envelope is accepted."""
    import ssl

    import aiohttp

    from gateway.xml import envelope as env
    from gateway.xml.signature import Signer

    settings, _ = fast_pair
    xb = Gateway(settings["XB"])
    await xb.start()
    office_b = await _office(settings["XB"])
    root = tmp_path / "gw"
    signer = Signer.from_files(root / "XA/certs/signing.key", root / "XA/certs/signing.pem")
    header = env.Header(
        message_id=f"nobroker-{uuid.uuid4().hex[:8]}",
        sender="XA",
        receiver="XB",
        agreement="xa-xb-maa",
        message_type="maa.request",
        created=env.utcnow(),
        payload_format="maa-xml",
        categories=("goods", "personal", "trader", "transport", "financial"),
    )
    payload = (EXAMPLES / "maa-xml" / "maa.request.xml").read_bytes()
    signed = signer.sign(env.build_envelope(header, payload, "application/xml"))
    ctx = ssl.create_default_context(cafile=str(root / "XB/ca/ca.pem"))
    ctx.load_cert_chain(root / "XA/certs/tls-client.pem", root / "XA/certs/tls-client.key")
    url = f"https://127.0.0.1:{xb.partner_port}/v1/messages"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            prefix = settings["XB"].broker.prefix
            closed = await asyncio.to_thread(close_broker_connections, f"maagw-{prefix}XB")
            assert closed == 1
            for _ in range(50):
                if not xb.runtime.relay.ready:
                    break
                await asyncio.sleep(0.05)
            async with http.post(
                url,
                data=signed,
                server_hostname="gw.xb.test",
                headers={"Content-Type": "application/xml"},
            ) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
            assert not await office_b.drain("maagw.inbound", timeout=1.0, idle=0.3)
            for _ in range(200):  # aio-pika reconnects after its interval
                if xb.runtime.relay.ready:
                    break
                await asyncio.sleep(0.1)
            async with http.post(
                url,
                data=signed,
                server_hostname="gw.xb.test",
                headers={"Content-Type": "application/xml"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            got = await office_b.drain("maagw.inbound", want=1)
            assert [m.message_id for m in got] == [header.message_id]
    finally:
        await office_b.channel.close()
        await xb.stop()
