"""Unit tests of gateway/inbound.py: reading the body within its limit, peeking at message ids.

The whole pipeline against real TLS, RabbitMQ and signatures is exercised in
``tests/integration/test_inbound_security.py`` and ``test_policy_flow.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from lxml import etree

from gateway.api.partner import read_body
from gateway.xml.envelope import _peek_message_id

LIMIT = 1000


def _request(chunks: list[bytes], content_length: int | None, *, eof: bool = True) -> object:
    """A request whose body stream holds ``chunks`` (and ends if ``eof``)."""
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        payload.feed_data(chunk)
    if eof:
        payload.feed_eof()
    headers = (
        {"Content-Length": str(content_length)}
        if content_length is not None
        else {"Transfer-Encoding": "chunked"}
    )
    return make_mocked_request("POST", "/v1/messages", headers=headers, payload=payload)


@pytest.mark.parametrize(
    ("chunks", "declared", "expected"),
    [
        ([b"a" * 10, b"b" * 5], 15, b"a" * 10 + b"b" * 5),
        ([b"a" * 10, b"b" * 5], None, b"a" * 10 + b"b" * 5),
        ([b"x" * LIMIT], LIMIT, b"x" * LIMIT),
        ([b"x" * LIMIT], None, b"x" * LIMIT),
        ([b"x" * (LIMIT - 1), b"yy"], None, None),
        ([], 0, b""),
    ],
    ids=["declared", "chunked", "declared-at-limit", "chunked-at-limit", "chunked-over", "empty"],
)
async def test_read_body_returns_the_body_within_the_limit_and_none_past_it(
    chunks: list[bytes], declared: int | None, expected: bytes | None
) -> None:
    """Bodies up to the limit are returned whole; a body past it gives None."""
    assert await read_body(_request(chunks, declared), LIMIT) == expected  # type: ignore[arg-type]


async def test_read_body_refuses_a_declared_length_before_reading() -> None:
    """An over-long Content-Length is refused at once, while no body byte has arrived."""
    request = _request([], LIMIT + 1, eof=False)
    assert await asyncio.wait_for(read_body(request, LIMIT), 1) is None  # type: ignore[arg-type]


async def test_read_body_stops_a_chunked_body_without_waiting_for_its_end() -> None:
    """A chunked body is refused as soon as it passes the limit, its end never sent."""
    request = _request([b"x" * 600, b"y" * 600], None, eof=False)
    assert await asyncio.wait_for(read_body(request, LIMIT), 1) is None  # type: ignore[arg-type]


async def test_read_body_gives_up_on_a_body_that_stops_arriving() -> None:
    """A body that stalls before its declared end raises TimeoutError after ``timeout``."""
    request = _request([b"x" * 10], 100, eof=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_body(request, LIMIT, timeout=0.1), 5)  # type: ignore[arg-type]


async def test_read_body_within_its_timeout_returns_the_body() -> None:
    """A body that is all there is read whole under a timeout."""
    request = _request([b"a" * 10, b"b" * 5], 15)
    assert await read_body(request, LIMIT, timeout=5) == b"a" * 10 + b"b" * 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (b"<Header><MessageId>m-1</MessageId></Header>", "m-1"),
        (b"<Header><MessageId> m-<!--x-->2 </MessageId></Header>", "m-2"),
        (b"<Header/>", None),
        (b"<Header><MessageId></MessageId></Header>", None),
        (b"<Header><MessageId>" + b"m" * 129 + b"</MessageId></Header>", None),
        (b"<Header><MessageId>a&#10;b</MessageId></Header>", None),
    ],
    ids=["plain", "comment", "missing", "empty", "too-long", "unprintable"],
)
def test_peek_message_id_reads_only_a_plausible_id(xml: bytes, expected: str | None) -> None:
    """The id quoted in a rejection of an unverified envelope is whole, short and printable."""
    ns = b'xmlns="urn:maagw:envelope:1"'
    root = etree.fromstring(b"<Envelope " + ns + b">" + xml + b"</Envelope>")
    assert _peek_message_id(root) == expected


def test_a_batch_body_splits_into_exactly_the_envelopes_sent() -> None:
    """decode_multipart returns each part byte for byte as encode_multipart wrote it."""
    from gateway.xml.batch import decode_multipart, encode_multipart

    parts = [b"<a>1</a>", b"<b>\r\n two\r\n</b>", b"<c/>"]
    body = encode_multipart(parts, "b0undary")
    assert decode_multipart(body, 'multipart/mixed; boundary="b0undary"') == parts


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nContent-Type: application/xml\r\n\r\n<a/>\r\n", 'multipart/mixed; boundary="x"'),
        (b"--x\r\n\r\n<a/>\r\n--x--\r\n", "multipart/mixed"),
        (b"--x--\r\n", 'multipart/mixed; boundary="x"'),
    ],
)
def test_a_malformed_batch_is_refused(body: bytes, content_type: str) -> None:
    """An unclosed batch, one without boundary, or an empty one is ENVELOPE_BATCH."""
    from gateway.errors import EnvelopeError
    from gateway.xml.batch import decode_multipart

    with pytest.raises(EnvelopeError) as info:
        decode_multipart(body, content_type)
    assert info.value.code == "ENVELOPE_BATCH"


@pytest.mark.parametrize(
    ("offset", "inside"),
    [
        (timedelta(0), True),
        (timedelta(days=-6), True),
        (timedelta(days=-8), False),
        (timedelta(minutes=30), False),
    ],
)
def test_the_signing_time_is_the_created_time_inside_the_replay_window(
    offset: timedelta, inside: bool
) -> None:
    """Created is used as the signing time only when it lies in the replay window."""
    from gateway.xml import envelope as env
    from gateway.xml.envelope import _peek_created

    created = env.utcnow() + offset
    header = env.Header(
        message_id="m",
        sender="XA",
        receiver="XB",
        agreement="a",
        message_type="maa.request",
        created=created,
        payload_format="maa-xml",
    )
    root = env.build_envelope(header, b"<a xmlns='urn:x'/>", "application/xml")
    peeked = _peek_created(root)
    assert (peeked is not None) == inside
    if inside:
        assert peeked is not None and abs((peeked - created).total_seconds()) < 0.01
