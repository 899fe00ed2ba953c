"""Issue 12, point 6 through the running gateway: strict HTTP on the partner API.

Only XB runs; the requests come over real mutual TLS with XA's client certificate.
Transfer and content codings and media types outside the documented ones are refused
with a signed rejection, no answer names the server's software, a batch's refusals
are one audit entry, and refusals use up an allowance of their own.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs
from test_inbound_security import (
    XB,
    Answer,
    assert_refused,
    audit_entries,
    back_office,
    client_context,
    link,
    make_envelope,
    provisioned,
    read_receipt,
    running,
    signer_of,
)
from test_partner_limits import audited, xb_with

from gateway.audit.chain import Entry
from gateway.config.models import Settings
from gateway.demo import AGREEMENTS
from gateway.xml.batch import encode_multipart

HEAD = b"POST /v1/messages HTTP/1.1\r\nHost: gw.xb.test\r\n"


async def exchange(xb: XB, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes over mTLS as XA; the answer's status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        xb.link.port,
        ssl=client_context(xb.root, "XA", "XB"),
        server_hostname="gw.xb.test",
    )
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 20)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 20)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


@pytest.fixture
async def xb(pair: dict[str, Settings], tmp_path: Path) -> AsyncIterator[XB]:
    """XB running with the default limits, and a link to it as XA."""
    async with xb_with(pair, tmp_path) as running_xb:
        yield running_xb


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def gzip_encoded(signed: bytes) -> bytes:
    packed = gzip.compress(signed)
    return (
        HEAD
        + b"Content-Type: application/xml\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(packed)}\r\n\r\n".encode()
        + packed
    )


def transfer_coded(signed: bytes) -> bytes:
    return (
        HEAD
        + b"Content-Type: application/xml\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + chunked(signed)
    )


def typed(content_type: str | None) -> Callable[[bytes], bytes]:
    def build(signed: bytes) -> bytes:
        line = f"Content-Type: {content_type}\r\n".encode() if content_type else b""
        return HEAD + line + f"Content-Length: {len(signed)}\r\n\r\n".encode() + signed

    build.__name__ = f"content_type_{content_type}"
    return build


REFUSED = [
    (transfer_coded, "HTTP_TRANSFER_ENCODING", 501),
    (gzip_encoded, "HTTP_CONTENT_ENCODING", 415),
    (typed("text/plain"), "HTTP_CONTENT_TYPE", 415),
    (typed("application/json"), "HTTP_CONTENT_TYPE", 415),
    (typed(None), "HTTP_CONTENT_TYPE", 415),
]


@pytest.mark.parametrize(("build", "code", "status"), REFUSED, ids=[b[0].__name__ for b in REFUSED])
async def test_a_request_outside_the_documented_http_is_refused_with_a_signed_receipt(
    xb: XB, build: Callable[[bytes], bytes], code: str, status: int
) -> None:
    """An unknown transfer coding, a content coding, or another media type: signed refusal, audited, nothing published."""
    status_got, headers, body = await exchange(xb, build(xb.signer.sign(make_envelope())))
    assert status_got == status
    assert headers["connection"].lower() == "close"
    await assert_refused(xb, Answer(status_got, body, headers), code)


async def test_a_transfer_coding_the_parser_cannot_frame_gets_the_same_code_and_is_audited(
    xb: XB,
) -> None:
    """``Transfer-Encoding: gzip`` alone: 501 HTTP_TRANSFER_ENCODING (unsigned: no request was read), logged, audited."""
    request = HEAD + b"Content-Type: application/xml\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    with capture_logs() as logs:
        status, headers, body = await exchange(xb, request)
    assert [(e["code"], e["partner"]) for e in logs if e["event"] == "request_malformed"] == [
        ("HTTP_TRANSFER_ENCODING", "XA")
    ]
    assert status == 501
    assert body.startswith(b"HTTP_TRANSFER_ENCODING:")
    assert b"abc" not in body  # the parser's message quoted the request's bytes
    assert headers["server"] == "maagw"
    rejected = await audited(xb, "rejected", 1)
    assert [(e.partner, e.code) for e in rejected] == [("XA", "HTTP_TRANSFER_ENCODING")]
    assert await xb.inbound_count() == 0


async def test_the_documented_forms_are_still_accepted(xb: XB) -> None:
    """application/xml with a charset, sent chunked, is accepted (the checks are not stricter than documented)."""
    signed = xb.signer.sign(make_envelope())
    request = (
        HEAD
        + b"Content-Type: application/xml; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(signed)
    )
    status, _, body = await exchange(xb, request)
    assert status == 200, body[:300]
    [entry] = read_receipt(body, xb.receipt_cert).entries
    assert entry.status == "accepted"


async def test_a_size_refusal_names_the_size_that_was_sent(xb: XB) -> None:
    """The SIZE_LIMIT reason names the declared length of an identity body, never a compressed one."""
    limit = xb.settings.partner_api.max_body_bytes
    declared = limit + 12345
    request = HEAD + f"Content-Type: application/xml\r\nContent-Length: {declared}\r\n\r\n".encode()
    status, _, body = await exchange(xb, request)
    assert status == 413
    [entry] = read_receipt(body, xb.receipt_cert).entries
    assert entry.code == "SIZE_LIMIT"
    assert entry.reason is not None and f"body of {declared} bytes" in entry.reason
    # a gzip bomb under the limit when compressed is refused for its coding, never inflated
    bomb = gzip.compress(b"<a>" + b" " * (limit * 2) + b"</a>")
    assert len(bomb) < limit
    status, _, body = await exchange(
        xb,
        HEAD
        + b"Content-Type: application/xml\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
        + bomb,
    )
    assert status == 415
    [entry] = read_receipt(body, xb.receipt_cert).entries
    assert entry.code == "HTTP_CONTENT_ENCODING"


async def test_no_answer_names_the_servers_software(xb: XB) -> None:
    """Answers of both listeners, routed or written by the HTTP parser, say ``Server: maagw`` only."""
    answers: list[dict[str, str]] = []
    good = await xb.link.post(xb.signer.sign(make_envelope()))
    assert good.status == 200
    answers.append({k.lower(): v for k, v in good.headers.items()})
    for request in (
        b"GET /nowhere HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n",
        b"GET /v1/ping HTTP/1.1\r\nHost: gw.xb.test\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        status, headers, _ = await exchange(xb, request)
        assert status in (204, 400, 404)
        answers.append(headers)
    admin = f"http://127.0.0.1:{xb.gateway.admin_port}"
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/nowhere", "/readyz"):
            async with session.get(admin + path) as resp:
                answers.append({k.lower(): v for k, v in resp.headers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", xb.gateway.admin_port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    head = (await asyncio.wait_for(reader.read(), 20)).split(b"\r\n\r\n")[0].decode()
    writer.close()
    answers.append(
        {
            k.strip().lower(): v.strip()
            for k, _, v in (h.partition(":") for h in head.split("\r\n")[1:])
        }
    )
    assert len(answers) == 8
    for headers in answers:
        assert headers["server"] == "maagw"
        shown = " ".join(headers.values()).lower()
        assert "aiohttp" not in shown
        assert "python" not in shown


# --- batches -----------------------------------------------------------------------------


def _agreements(tmp_path: Path, rate: str) -> Path:
    """A copy of the example agreements with every flow's rate set to ``rate``."""
    target = tmp_path / "agreements-src"
    shutil.copytree(AGREEMENTS, target)
    for path in target.glob("*.toml"):
        text, n = re.subn(
            r"(?m)^rate_per_minute = .*$", f"rate_per_minute = {rate}", path.read_text()
        )
        assert n
        path.write_text(text)
    return target


async def _post_batch(xb: XB, parts: list[bytes]) -> Answer:
    boundary = "maagw-test-batch"
    return await xb.link.post(
        encode_multipart(parts, boundary),
        **{"Content-Type": f'multipart/mixed; boundary="{boundary}"'},
    )


@asynccontextmanager
async def xb_rated(tmp_path: Path, rate: str) -> AsyncIterator[XB]:
    """XB running with XA's flow at ``rate`` messages a minute, and a link to it as XA."""
    root = tmp_path / "gw"
    async with (
        provisioned(root, ("XA", "XB"), agreements_dir=_agreements(tmp_path, rate)) as settings,
        running(settings["XB"]) as gateway,
        back_office(settings["XB"]) as office,
    ):
        assert gateway.partner_port is not None
        async with link(root, "XA", "XB", gateway.partner_port) as lnk:
            yield XB(root, settings["XB"], gateway, lnk, signer_of(root, "XA"), office)


async def test_a_batch_of_1000_junk_parts_is_one_audit_entry(tmp_path: Path, rabbitmq: str) -> None:
    """998 unreadable parts and two good ones (the most a batch holds): one entry lists the refusals."""
    async with xb_rated(tmp_path, "600000") as xb:
        junk = [f"<junk n='{i}'/>".encode() for i in range(998)]
        good = [xb.signer.sign(make_envelope()) for _ in range(2)]
        answer = await _post_batch(xb, [good[0], *junk, good[1]])
        assert answer.status == 200
        entries = read_receipt(answer.body, xb.receipt_cert).entries
        assert [e.status for e in entries].count("accepted") == 2
        assert [e.status for e in entries].count("rejected") == 998
        rejected = await audit_entries(xb.gateway, event="rejected", limit=5000)
        [summary] = rejected
        assert (summary.partner, summary.code, summary.outcome) == (
            "XA",
            "BATCH_REFUSED",
            "refused",
        )
        details = json.loads(summary.details)
        assert details["parts"] == 1000
        assert details["codes"] == {"SIG_MISSING": 998}
        assert len(details["refused"]) == 998
        assert {r["code"] for r in details["refused"]} == {"SIG_MISSING"}
        # the receipt list the refusals went out in is named, and kept as evidence
        assert summary.receipt_digest is not None
        assert await xb.gateway.runtime.audit.get_evidence(summary.receipt_digest) is not None
        receipts: list[Entry] = await audit_entries(xb.gateway, event="receipt", limit=5000)
        assert sorted(e.outcome or "" for e in receipts) == ["accepted", "accepted"]
        assert {e.receipt_digest for e in receipts} == {summary.receipt_digest}
        assert len(await xb.office.drain("maagw.inbound", want=2, timeout=10)) == 2


async def test_refused_parts_use_up_an_allowance_and_then_everything_gets_429(
    tmp_path: Path, rabbitmq: str
) -> None:
    """A batch of 400 junk parts is refused only as often as XA's flows allow messages, then XA gets 429."""
    # two flows of one message a minute: the allowance (2) does not refill during the test
    async with xb_rated(tmp_path, "1") as xb:
        # XA's allowance: its flows to XB in all agreements together (burst = a minute's rate)
        allowance = sum(
            flow.rate_per_minute
            for agreement in xb.settings.agreements.values()
            if (flow := agreement.flow("XA", "XB")) is not None
        )
        assert allowance < 400
        answer = await _post_batch(xb, [f"<junk n='{i}'/>".encode() for i in range(400)])
        assert answer.status == 200
        assert int(answer.headers["Retry-After"]) >= 1
        entries = read_receipt(answer.body, xb.receipt_cert).entries
        # the allowance refills (at allowance/60 a second) while the batch runs
        assert allowance <= len(entries) < allowance + 10
        assert {e.status for e in entries} == {"rejected"}
        for _ in range(3):
            later = await xb.link.post(xb.signer.sign(make_envelope()))
            assert later.status == 429
            assert int(later.headers["Retry-After"]) >= 1
        [summary] = await audit_entries(xb.gateway, event="rejected")
        assert len(json.loads(summary.details)["refused"]) == len(entries)
        decisions = await audit_entries(xb.gateway, event="policy_decision")
        # the allowance running out is audited once a minute at most, however many 429s follow
        assert [(d.partner, d.code, d.outcome) for d in decisions] == [
            ("XA", "POLICY_RATE_REFUSALS", "deny")
        ]
        assert await xb.inbound_count() == 0
