"""Unit tests of gateway/trust/tls_transport.py: TLS with a request-sized receive buffer.

asyncio's own TLS protocol allocates 256 KiB per connection; the partner listener's
must allocate ``READ_BUFFER_BYTES`` and still carry bodies far larger than that.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from gateway.ca import authority
from gateway.trust.tls_transport import READ_BUFFER_BYTES, start_tls


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context trusting it, from a fresh CA."""
    authority.init_ca("Test CA", tmp_path / "ca")
    authority.issue(tmp_path / "ca", "tls-server", "server", tmp_path / "out", sans=["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "out" / "server.pem", tmp_path / "out" / "server.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    return server, client


class Echo(asyncio.Protocol):
    """Upgrades to TLS with ``start_tls``, then sends back the byte count of each message."""

    def __init__(self, context: ssl.SSLContext, ready: asyncio.Future[asyncio.Transport]) -> None:
        self._context = context
        self._ready = ready
        self._tls: asyncio.Transport | None = None
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        asyncio.get_running_loop().create_task(self._upgrade(transport))

    async def _upgrade(self, raw: asyncio.Transport) -> None:
        try:
            self._tls = await start_tls(raw, self, self._context, handshake_timeout=10)
        except Exception as exc:  # the test reports it
            self._ready.set_exception(exc)
            return
        self._ready.set_result(self._tls)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if data.endswith(b"\n") and self._tls is not None:
            self._tls.write(f"{self._received}\n".encode())
            self._received = 0


async def test_a_connection_gets_the_small_buffer_and_carries_a_large_body(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The server side reads through a READ_BUFFER_BYTES buffer; 3 MiB arrive whole both ways."""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[asyncio.Transport] = loop.create_future()
    server = await loop.create_server(lambda: Echo(server_ctx, ready), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        tls = await asyncio.wait_for(ready, 10)
        protocol = tls._ssl_protocol  # type: ignore[attr-defined]
        assert protocol.max_size == READ_BUFFER_BYTES < 256 * 1024
        assert len(protocol._ssl_buffer) == READ_BUFFER_BYTES
        body = b"x" * (3 * 1024 * 1024) + b"\n"
        writer.write(body)
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 20) == f"{len(body)}\n".encode()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_failed_handshake_raises_and_closes_the_connection(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A client that is not speaking TLS makes start_tls raise; the plain connection is closed."""
    server_ctx, _ = contexts
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[asyncio.Transport] = loop.create_future()
    server = await loop.create_server(lambda: Echo(server_ctx, ready), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(ready, 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
