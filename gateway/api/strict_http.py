"""The HTTP the partner API takes, and what the gateway's listeners say about themselves.

``check_request`` refuses a ``POST /v1/messages`` outside the documented form before its
body is read (docs/partner-api.md, "The request"):

- ``Transfer-Encoding`` absent or exactly ``chunked`` — else ``HTTP_TRANSFER_ENCODING``
  (501, RFC 9112 6.1: a coding the server does not understand);
- no ``Content-Encoding`` (or ``identity``) — else ``HTTP_CONTENT_ENCODING`` (415). Bodies
  are never inflated (the listener runs with aiohttp's ``auto_decompress`` off), so the
  size limit always applies to the bytes that are parsed;
- ``Content-Type`` ``application/xml`` (one envelope) or ``multipart/mixed`` (a batch) —
  else ``HTTP_CONTENT_TYPE`` (415).

Both listeners answer with ``Server: maagw`` and no version: ``hide_server`` for every
routed answer, and ``QuietRequestHandler`` for the answers aiohttp writes itself when it
cannot parse a request (those bypass the application and its signals). A request the
parser refuses is answered with a stable code instead of the parser's message, which
quotes the request's bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import ErrorCode, ProtocolError

log = structlog.get_logger(__name__)


#: the ``Server`` header of every answer
SERVER_NAME = "maagw"


#: the media types of POST /v1/messages: one envelope, a batch
MEDIA_TYPES = frozenset({"application/xml", "multipart/mixed"})


def check_request(request: web.BaseRequest) -> ProtocolError | None:
    """The first way ``request`` departs from the partner API's HTTP, or None."""
    codings = [
        c.strip().lower()
        for value in request.headers.getall(hdrs.TRANSFER_ENCODING, [])
        for c in value.split(",")
    ]
    if codings and codings != ["chunked"]:
        return ProtocolError(
            f"Transfer-Encoding {', '.join(codings)} is not supported: only chunked",
            code=ErrorCode.HTTP_TRANSFER_ENCODING,
        )
    encodings = [
        c.strip().lower()
        for value in request.headers.getall(hdrs.CONTENT_ENCODING, [])
        for c in value.split(",")
    ]
    if any(e not in ("", "identity") for e in encodings):
        return ProtocolError(
            f"Content-Encoding {', '.join(encodings)} is not accepted: send the envelope as is",
            code=ErrorCode.HTTP_CONTENT_ENCODING,
        )
    if request.content_type not in MEDIA_TYPES:
        given = request.headers.get(hdrs.CONTENT_TYPE, "none")[:100]
        return ProtocolError(
            f"Content-Type {given} is not accepted: application/xml (one envelope) or "
            "multipart/mixed (a batch)",
            code=ErrorCode.HTTP_CONTENT_TYPE,
        )
    return None


async def hide_server(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: no product or version in the ``Server`` header."""
    response.headers[hdrs.SERVER] = SERVER_NAME


#: called with (code, reason) when the parser refused a request (it logs and audits)
Refused = Callable[[str, str], None]


class QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, without a banner on the answers it writes itself."""

    __slots__ = ("_on_refused",)

    def __init__(self, manager: Any, *, on_refused: Refused | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_refused = on_refused

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            # a bug in a handler (500) or a handler timing out (504): aiohttp logs it
            response = super().handle_error(request, status, exc, message)
            response.headers[hdrs.SERVER] = SERVER_NAME
            return response
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was sent already")
        if "invalid `Transfer-Encoding`" in str(exc):
            status, code = 501, ErrorCode.HTTP_TRANSFER_ENCODING
            reason = "Transfer-Encoding is not supported: only chunked"
        else:
            code = ErrorCode.HTTP_MALFORMED
            reason = f"the request is not valid HTTP/1.1 ({exc.__class__.__name__})"
        if self._on_refused is not None:
            self._on_refused(code, reason)
        else:
            log.warning("request_malformed", code=code, reason=reason, status=status)
        response = web.Response(
            status=status, text=f"{code}: {reason}\n", headers={hdrs.SERVER: SERVER_NAME}
        )
        response.force_close()
        return response


def handler_factory(server: web.Server, **kwargs: Any) -> Callable[..., QuietRequestHandler]:
    """Make ``QuietRequestHandler``s for ``server`` (``runner.server``), as it would make its own.

    Extra keyword arguments of the returned callable (``on_refused``, aiohttp's
    ``keepalive_timeout``) are added to ``kwargs`` for that one handler.
    """

    def make(**more: Any) -> QuietRequestHandler:
        loop = asyncio.get_running_loop()
        return QuietRequestHandler(server, loop=loop, **kwargs, **more)

    return make
