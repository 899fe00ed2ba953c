"""The partner API over HTTP: ``POST /v1/messages`` (one envelope or a batch), ``GET /v1/ping``.

Reads the body within its limits and deadline, hands each envelope to the inbound
pipeline and answers with the signed receipt list it builds.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from gateway.api import strict_http
from gateway.api.guard import (
    BODY_TIMEOUT,
    GUARD,
    LINGER_SECONDS,
)
from gateway.errors import (
    AuthError,
    EnvelopeError,
    ErrorCode,
)
from gateway.pipeline.context import Inbound
from gateway.pipeline.inbound import InboundPipeline
from gateway.pipeline.runtime import Runtime
from gateway.trust.identity import peer_der
from gateway.xml.batch import decode_multipart

#: bytes read from the body at a time
READ_CHUNK = 64 * 1024


async def handle_messages(request: web.Request) -> web.Response:
    """``POST /v1/messages``: one signed envelope (or a batch) in, one signed receipt out.

    Before the body is read: the partner's refusal allowance (429 while it is used up)
    and the form of the request (``strict_http.check_request``); the body is read
    within ``body_timeout`` (else the connection is closed, ``HTTP_BODY_TIMEOUT``).
    """
    rt: Runtime = request.app[RUNTIME]
    pipeline: InboundPipeline = request.app[PIPELINE]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    try:
        partner = rt.trust.identify(peer_der(ssl_object))
    except AuthError:
        # the connection gate closes such connections before any request; belt and braces
        raise web.HTTPForbidden() from None
    structlog.contextvars.bind_contextvars(partner=partner)
    waiting = pipeline.over_allowance(partner)
    if waiting is not None:
        return await answer_and_close(request, await _answer(pipeline, partner, waiting))
    problem = strict_http.check_request(request)
    if problem is not None:
        refused = pipeline.refuse_request(partner, problem)
        return await answer_and_close(request, await _answer(pipeline, partner, refused))
    limits = rt.settings.partner_api
    limit = limits.max_body_bytes
    try:
        body = await read_body(request, limit, timeout=limits.body_timeout)
    except TimeoutError:
        reason = f"request body not complete within {limits.body_timeout:g} s"
        request.app[GUARD].close(request.transport, BODY_TIMEOUT, reason)
        return web.Response(status=408)  # never sent: the connection is closed
    if body is None:
        # bodies are never inflated (strict_http): the size refused is the size sent
        declared = request.content_length
        size = (
            f"{declared} bytes (its Content-Length)"
            if declared is not None and declared > limit
            else f"more than {limit} bytes"
        )
        refused = pipeline.refuse_request(
            partner,
            EnvelopeError(
                f"body of {size} exceeds the limit of {limit} bytes", code=ErrorCode.SIZE_LIMIT
            ),
        )
        return await answer_and_close(request, await _answer(pipeline, partner, refused))
    if request.content_type == "multipart/mixed":
        try:
            parts = decode_multipart(body, request.headers.get("Content-Type", ""))
        except EnvelopeError as exc:
            return await _answer(pipeline, partner, pipeline.refuse_request(partner, exc))
        done = await asyncio.gather(*(pipeline.receive(partner, part) for part in parts))
        return await _answer(pipeline, partner, *done, batch=True)
    return await _answer(pipeline, partner, await pipeline.receive(partner, body))


async def _answer(
    pipeline: InboundPipeline, partner: str, *done: Inbound, batch: bool = False
) -> web.Response:
    """The pipeline's receipt step, as an HTTP response."""
    reply = await pipeline.answer(partner, list(done), batch=batch)
    if reply.content_type == "text/plain":
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body.decode())
    return web.Response(
        status=reply.status,
        headers=reply.headers,
        body=reply.body,
        content_type=reply.content_type,
    )


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` now, drop what the client still sends for a moment, then close.

    The refused body is never read as such. Closing a socket with unread data makes the
    kernel reset the connection, which can destroy the answer before the client has
    read it; so the rest is read and discarded, but only for ``LINGER_SECONDS`` (aiohttp
    would linger ten seconds, holding the connection and a shutdown that long).
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, web.HTTPException):
        async with asyncio.timeout(LINGER_SECONDS):
            while await request.content.readany():
                pass
    request.protocol.force_close()
    return response


async def read_body(
    request: web.BaseRequest, limit: int, *, timeout: float | None = None
) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before a byte of the
    body is read; a chunked body is read piecewise and refused once it passes the
    limit, so at most ``limit`` bytes are ever held. (aiohttp's ``client_max_size``
    applies only to ``request.read()``, which is not used here.) Raises
    ``TimeoutError`` when the body is not whole within ``timeout`` seconds.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


RUNTIME = web.AppKey("runtime", Runtime)


PIPELINE = web.AppKey("inbound_pipeline", InboundPipeline)


async def _ping(request: web.Request) -> web.Response:
    """``GET /v1/ping``: 204 for an authenticated partner (liveness of the link; benchmarks)."""
    transport = request.transport
    try:
        request.app[RUNTIME].trust.identify(
            peer_der(transport.get_extra_info("ssl_object") if transport else None)
        )
    except AuthError:
        raise web.HTTPForbidden() from None
    return web.Response(status=204)
