"""End to end over the real RabbitMQ and real mutual TLS on loopback: XA's back office to XB's."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import uuid
from pathlib import Path

import aio_pika
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from gateway.config.models import Settings
from gateway.relay.back_office import BackOffice
from gateway.relay.topology import DELAYS
from gateway.service.gateway import Gateway
from gateway.state.postgres import PostgresStateStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()
REPLY = (EXAMPLES / "national-json" / "maa.reply.json").read_bytes()


async def _back_office(s: Settings) -> tuple[BackOffice, aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(s.broker.url)
    return await BackOffice(s, connection).open(), connection


async def test_message_arrives_once_on_the_partners_inbound_queue(
    pair: dict[str, Settings],
) -> None:
    """A message published to XA's outbound exchange arrives exactly once on XB's inbound queue."""
    xa, xb = Gateway(pair["XA"]), Gateway(pair["XB"])
    await xa.start()
    await xb.start()
    bo_a, conn_a = await _back_office(pair["XA"])
    bo_b, conn_b = await _back_office(pair["XB"])
    try:
        mid = str(uuid.uuid4())
        await bo_a.send("XB", REQUEST, message_id=mid)
        got = await bo_b.drain("maagw.inbound", want=1, idle=2.0)
        assert [m.message_id for m in got] == [mid]
        assert got[0].headers["x-maagw-sender"] == "XA"
        assert got[0].headers["x-maagw-format"] == "maa-xml"
        assert got[0].type == "maa.request"
        assert b"<MaaRequest" in got[0].body
        events = await bo_a.drain("maagw.events", want=1)
        delivered = [json.loads(e.body) for e in events]
        assert [(e["message_id"], e["status"], e["receipt"]) for e in delivered] == [
            (mid, "delivered", "accepted")
        ]
    finally:
        await conn_a.close()
        await conn_b.close()
        await xa.stop()
        await xb.stop()


@pytest.mark.postgres
async def test_a_request_and_its_reply_flow_with_xbs_state_on_postgresql(
    pair: dict[str, Settings], pg_url: str
) -> None:
    """XB's state store on PostgreSQL ([state] url): XA's request arrives, XB's reply to it goes back."""
    xb_settings = pair["XB"].model_copy(update={"state_url": pg_url})
    xa, xb = Gateway(pair["XA"]), Gateway(xb_settings)
    await xa.start()
    await xb.start()
    bo_a, conn_a = await _back_office(pair["XA"])
    bo_b, conn_b = await _back_office(xb_settings)
    try:
        assert isinstance(xb.runtime.store, PostgresStateStore)
        request_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        await bo_a.send("XB", REQUEST, message_id=request_id)
        got = await bo_b.drain("maagw.inbound", want=1, idle=2.0)
        assert [m.message_id for m in got] == [request_id]
        # XB knows the request (PostgreSQL), so its reply passes XB's policy and XA's
        await bo_b.send(
            "XA", REPLY, message_id=reply_id, message_type="maa.reply", correlation_id=request_id
        )
        replies = await bo_a.drain("maagw.inbound", want=1, idle=2.0)
        assert [(m.message_id, m.type, m.correlation_id) for m in replies] == [
            (reply_id, "maa.reply", request_id)
        ]
        events = [json.loads(e.body) for e in await bo_b.drain("maagw.events", want=1)]
        assert [(e["message_id"], e["status"]) for e in events] == [(reply_id, "delivered")]
        con = await asyncpg.connect(pg_url)
        try:
            claim = await con.fetchrow(
                "SELECT state, owner FROM claims WHERE sender = 'XA' AND message_id = $1",
                request_id,
            )
            sent = await con.fetchval("SELECT partner FROM outbox WHERE message_id = $1", reply_id)
        finally:
            await con.close()
        assert tuple(claim) == ("published", xb_settings.instance_id)
        assert sent == "XA"
    finally:
        await conn_a.close()
        await conn_b.close()
        await xa.stop()
        await xb.stop()


async def test_message_waits_in_the_broker_while_the_partner_is_down(
    pair: dict[str, Settings],
) -> None:
    """With XB stopped, XA acknowledges nothing it has not handed on; the message arrives once XB is back."""
    xa = Gateway(pair["XA"])
    await xa.start()
    bo_a, conn_a = await _back_office(pair["XA"])
    bo_b, conn_b = await _back_office(pair["XB"])
    xb: Gateway | None = None
    try:
        mid = str(uuid.uuid4())
        await bo_a.send("XB", REQUEST, message_id=mid)
        retrying = await bo_a.drain("maagw.events", want=1, timeout=15)
        first = json.loads(retrying[0].body)
        assert (first["message_id"], first["status"]) == (mid, "retrying")
        assert first["code"] == "DELIVERY_UNREACHABLE"
        # the message is still held by the broker: in the partner queue or a delay queue
        names = xa.runtime.relay.names
        held = await bo_a.count(names.outbound_queue("XB"))
        for delay in DELAYS:
            held += await bo_a.count(names.retry_queue(delay))
        unacked = len(xa._outbound._inflight) if xa._outbound else 0
        assert held + unacked == 1
        xb = Gateway(pair["XB"])
        await xb.start()
        got = await bo_b.drain("maagw.inbound", want=1, timeout=30, idle=2.0)
        assert [m.message_id for m in got] == [mid]
    finally:
        await conn_a.close()
        await conn_b.close()
        await xa.stop()
        if xb is not None:
            await xb.stop()


async def test_a_client_without_certificate_gets_no_http_response(
    pair: dict[str, Settings],
) -> None:
    """A TLS client that presents no certificate never receives a single byte of HTTP."""
    xb = Gateway(pair["XB"])
    await xb.start()
    try:
        port = xb.partner_port
        assert port is not None

        def attempt() -> bytes:
            ctx = ssl.create_default_context(cafile=str(pair["XB"].tls.ca))
            ctx.check_hostname = False
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                try:
                    with ctx.wrap_socket(raw, server_hostname="gw.xb.test") as tls:
                        tls.sendall(
                            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                        )
                        return tls.recv(1024)
                except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                    return b""

        answer = await asyncio.to_thread(attempt)
        assert answer == b""
    finally:
        await xb.stop()


async def test_a_message_without_format_is_dead_lettered_with_its_reason(
    pair: dict[str, Settings],
) -> None:
    """A back-office message the gateway cannot read goes to the dead-letter queue with a reason and an event."""
    xa = Gateway(pair["XA"])
    await xa.start()
    bo_a, conn_a = await _back_office(pair["XA"])
    try:
        mid = str(uuid.uuid4())
        await bo_a.send("XB", REQUEST, message_id=mid, headers={"x-maagw-format": ""})
        dead = await bo_a.drain("maagw.dead", want=1)
        code = "RELAY_NO_FORMAT"
        assert [(m.message_id, m.headers["x-maagw-code"]) for m in dead] == [(mid, code)]
        assert dead[0].body == REQUEST
        events = [json.loads(e.body) for e in await bo_a.drain("maagw.events", want=1)]
        assert [(e["status"], e["code"]) for e in events] == [("rejected", code)]
        assert await bo_a.count(xa.runtime.relay.names.outbound_queue("XB")) == 0
    finally:
        await conn_a.close()
        await xa.stop()
