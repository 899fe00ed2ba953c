"""Unit tests of gateway/api/partner.py: reading the body within its limit and its time.

The whole pipeline against real TLS, RabbitMQ and signatures is exercised in
``tests/integration/test_inbound_security.py`` and ``test_policy_flow.py``.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from gateway.api.partner import read_body

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
