"""Issue 12, point 5 through the running gateway: slow and greedy partners are cut off.

Only XB runs, with short deadlines or small caps. The attacker is XA itself: raw TLS
sockets holding XA's valid client certificate, which pass the connection gate and
then misbehave (a head one byte a second, a body that stops, silence, too many
connections or requests). XA's legitimate requests must be served all the while.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs
from test_inbound_security import (
    XB,
    audit_entries,
    back_office,
    client_context,
    link,
    make_envelope,
    read_receipt,
    running,
    signer_of,
)

from gateway.audit.chain import Entry
from gateway.config.models import Settings

PING = b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n"
#: how long past a deadline a closure may come on a busy two-core machine
SLACK = 20.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def with_limits(settings: Settings, **limits: Any) -> Settings:
    """``settings`` with some ``[partner_api]`` settings changed."""
    return settings.model_copy(
        update={"partner_api": settings.partner_api.model_copy(update=limits)}
    )


@asynccontextmanager
async def xb_with(pair: dict[str, Settings], root: Path, **limits: Any) -> AsyncIterator[XB]:
    """XB running with the given ``[partner_api]`` limits, and a link to it as XA."""
    settings = with_limits(pair["XB"], **limits)
    async with running(settings) as gateway, back_office(settings) as office:
        assert gateway.partner_port is not None
        async with link(root, "XA", "XB", gateway.partner_port) as lnk:
            yield XB(root, settings, gateway, lnk, signer_of(root, "XA"), office)


async def connect(xb: XB) -> Conn:
    """A raw TLS connection to XB's partner API with XA's client certificate."""
    return await asyncio.open_connection(
        "127.0.0.1",
        xb.link.port,
        ssl=client_context(xb.root, "XA", "XB"),
        server_hostname="gw.xb.test",
    )


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)


async def audited(xb: XB, event: str, count: int, timeout: float = 20.0) -> list[Entry]:
    """XB's audit entries of ``event`` once there are ``count`` (written in the background)."""
    async with asyncio.timeout(timeout):
        while True:
            entries = await audit_entries(xb.gateway, event=event)
            if len(entries) >= count:
                return entries
            await asyncio.sleep(0.05)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read until the server ends the connection; what it sent before (b"": no answer)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return data


async def ping(conn: Conn) -> bytes:
    """Send ``GET /v1/ping`` and return the answer's head."""
    reader, writer = conn
    writer.write(PING)
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def close(conn: Conn) -> None:
    _, writer = conn
    writer.close()
    with suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def good_post(xb: XB) -> str:
    """Post one good envelope as XA over a fresh aiohttp connection; its receipt status."""
    answer = await xb.link.post(xb.signer.sign(make_envelope()))
    assert answer.status == 200, answer.body[:300]
    [entry] = read_receipt(answer.body, xb.receipt_cert).entries
    return entry.status


async def test_slowloris_and_a_stalled_body_are_cut_off_while_a_real_request_is_served(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """50 heads at a byte a second hit the header deadline, a stalled body the body timeout, a good request passes."""
    header_timeout, body_timeout = 5.0, 3.0
    async with xb_with(
        pair, tmp_path, header_timeout=header_timeout, body_timeout=body_timeout
    ) as xb:
        with capture_logs() as logs:
            loop = asyncio.get_running_loop()
            conns = await asyncio.gather(*(connect(xb) for _ in range(50)))
            await until(lambda: len(xb.gateway.connections.get("XA", ())) == 50)
            head = (
                b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\n"
                b"Content-Type: application/xml\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
            )

            async def trickle(writer: asyncio.StreamWriter) -> None:
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)

            async def slowloris(conn: Conn) -> tuple[float, bytes]:
                reader, writer = conn
                started = loop.time()
                sender = asyncio.create_task(trickle(writer))
                try:
                    answer = await closed_by_server(reader, header_timeout + SLACK)
                    return loop.time() - started, answer
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    await close(conn)

            attackers = [asyncio.create_task(slowloris(c)) for c in conns]
            stalled_reader, stalled_writer = stalled = await connect(xb)
            stalled_writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\nContent-Type: application/xml\r\n"
                b"Content-Length: 1000\r\n\r\n<Envelope>"
            )
            await stalled_writer.drain()
            stalled_at = loop.time()

            # XA's own gateway, while all of them hold their connections: served
            await until(lambda: len(xb.gateway.connections["XA"]) == 51)
            assert await good_post(xb) == "accepted"

            stalled_answer = await closed_by_server(stalled_reader, body_timeout + SLACK)
            stalled_for = loop.time() - stalled_at
            await close(stalled)
            results = await asyncio.gather(*attackers)

            # no answer to either: the connections were aborted at their deadline, not before
            assert stalled_answer == b""
            assert body_timeout * 0.9 <= stalled_for < body_timeout + SLACK
            assert [answer for _, answer in results] == [b""] * 50
            assert all(header_timeout * 0.9 <= took < header_timeout + SLACK for took, _ in results)
            guard = xb.gateway.guard
            assert guard.closures["HTTP_HEADER_TIMEOUT"] == 50
            assert guard.closures["HTTP_BODY_TIMEOUT"] == 1
            await until(lambda: not xb.gateway.connections.get("XA"))
            closed = await audited(xb, "connection_closed", 51)
            expected = [("XA", "HTTP_BODY_TIMEOUT")] + [("XA", "HTTP_HEADER_TIMEOUT")] * 50
            assert sorted((e.partner, e.code, e.outcome) for e in closed) == [
                (*pc, "closed") for pc in expected
            ]
            warned = [
                (e["partner"], e["code"])
                for e in logs
                if e["event"] == "connection_closed" and e["log_level"] == "warning"
            ]
            assert sorted(warned) == expected
            # and XB still serves XA
            assert await good_post(xb) == "accepted"


async def test_an_idle_connection_is_closed_quietly_after_the_idle_timeout(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """A keep-alive connection with no next request, and one that never sent any, are closed without audit."""
    idle = 2.0
    async with xb_with(pair, tmp_path, idle_timeout=idle) as xb:
        loop = asyncio.get_running_loop()
        used, silent = await connect(xb), await connect(xb)
        assert (await ping(used)).startswith(b"HTTP/1.1 204")
        started = loop.time()
        answers = await asyncio.gather(
            closed_by_server(used[0], idle + SLACK), closed_by_server(silent[0], idle + SLACK)
        )
        took = loop.time() - started
        await close(used)
        await close(silent)
        assert answers == [b"", b""]
        assert idle * 0.9 <= took < idle + SLACK
        assert xb.gateway.guard.closures["HTTP_IDLE_CLOSED"] == 2
        assert await audit_entries(xb.gateway, event="connection_closed") == []


async def test_a_partners_connections_beyond_its_cap_are_refused_and_audited(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """With a cap of 3, XA's 4th connection is aborted and audited; once one closes, a new one is served."""
    async with xb_with(pair, tmp_path, max_connections_per_partner=3) as xb:
        held = [await connect(xb) for _ in range(3)]
        for conn in held:
            assert (await ping(conn)).startswith(b"HTTP/1.1 204")
        extra = await connect(xb)  # the client's handshake completes; the gate then aborts
        extra[1].write(PING)
        assert await closed_by_server(extra[0], SLACK) == b""
        await close(extra)
        refused = await audited(xb, "connection_refused", 1)
        assert [(e.partner, e.code, e.outcome) for e in refused] == [
            ("XA", "CONN_PARTNER_LIMIT", "refused")
        ]
        assert xb.gateway.guard.refusals["CONN_PARTNER_LIMIT"] == 1
        await close(held.pop())
        await until(lambda: xb.gateway.guard.per_partner["XA"] == 2)
        again = await connect(xb)
        assert (await ping(again)).startswith(b"HTTP/1.1 204")
        for conn in [*held, again]:
            await close(conn)


async def test_connections_beyond_the_total_cap_are_dropped_before_the_handshake(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """With max_connections = 2, a third connection gets no TLS handshake; a later one does."""
    async with xb_with(pair, tmp_path, max_connections=2) as xb:
        held = [await connect(xb) for _ in range(2)]
        for conn in held:
            assert (await ping(conn)).startswith(b"HTTP/1.1 204")
        failed: BaseException | None = None
        try:
            await close(await connect(xb))
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            failed = exc
        assert failed is not None
        assert xb.gateway.guard.refusals["CONN_LIMIT"] == 1
        await close(held.pop())
        await until(lambda: xb.gateway.guard.open == 1)
        again = await connect(xb)
        assert (await ping(again)).startswith(b"HTTP/1.1 204")
        for conn in [*held, again]:
            await close(conn)


async def test_requests_beyond_a_partners_in_flight_cap_get_503_with_retry_after(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """With one request of XA in flight (its body pending) and a cap of 1, the next gets 503 and Retry-After."""
    async with xb_with(pair, tmp_path, max_requests_per_partner=1, body_timeout=60.0) as xb:
        slow = await connect(xb)
        slow[1].write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\nContent-Type: application/xml\r\n"
            b"Content-Length: 1000\r\n\r\n<Envelope>"
        )
        await slow[1].drain()
        await until(lambda: xb.gateway.guard.in_flight["XA"] == 1)
        busy = await xb.link.post(xb.signer.sign(make_envelope()))
        assert busy.status == 503
        assert busy.headers["Retry-After"] == "1"
        assert b"HTTP_REQUESTS_LIMIT" in busy.body
        assert xb.gateway.guard.requests_refused["XA"] == 1
        assert await xb.inbound_count() == 0
        await close(slow)
        await until(lambda: xb.gateway.guard.in_flight["XA"] == 0)
        assert await good_post(xb) == "accepted"


async def test_a_served_request_keeps_its_connection_for_the_next(
    pair: dict[str, Settings], tmp_path: Path
) -> None:
    """After an accepted envelope the connection stays open (keep-alive) and serves the next request."""
    async with xb_with(pair, tmp_path) as xb:
        conn = reader, writer = await connect(xb)
        signed = xb.signer.sign(make_envelope())
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {len(signed)}\r\n\r\n".encode()
            + signed
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in head.lower()
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        [entry] = read_receipt(await reader.readexactly(length), xb.receipt_cert).entries
        assert entry.status == "accepted"
        assert (await ping(conn)).startswith(b"HTTP/1.1 204")
        assert xb.gateway.guard.closures == {}
        await close(conn)
