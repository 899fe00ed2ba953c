"""Server-side TLS on an accepted connection, with a receive buffer sized for requests.

asyncio's ``SSLProtocol`` gives every connection a 256 KiB receive buffer, allocated
and zero-filled when the connection is made, whatever it will carry. A partner
connection mostly sits idle between small requests: 500 of them held 110 MiB of RSS
for these buffers alone (``bench/bench_connections.py``). ``start_tls`` is
``loop.start_tls`` with a ``READ_BUFFER_BYTES`` buffer; bodies are read a TLS record
or two at a time instead, which costs nothing measurable (a record is at most 16 KiB).

It builds on ``asyncio.sslproto.SSLProtocol`` and repeats the few calls of CPython's
``BaseEventLoop.start_tls`` (3.11); ``tests/gateway/trust/test_tls_transport.py`` checks that
the buffer is the smaller one and that a connection works through it.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto

#: bytes read from the socket at a time on a partner connection (asyncio: 256 KiB)
READ_BUFFER_BYTES = 32 * 1024


class _PartnerTLS(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a smaller receive buffer."""

    max_size = READ_BUFFER_BYTES


async def start_tls(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    *,
    handshake_timeout: float,
) -> asyncio.Transport:
    """Run the server side of a TLS handshake on ``transport``; return the TLS transport.

    Raises what ``loop.start_tls`` raises: ``ssl.SSLError`` (an ``OSError``),
    ``ConnectionError`` or ``TimeoutError``; the plain transport is closed then.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = _PartnerTLS(
        loop,
        protocol,
        context,
        waiter,
        server_side=True,
        call_connection_made=False,
        # typeshed says int; asyncio takes any number of seconds
        ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
    )
    # as loop.start_tls: pause first, so that no data reaches the TLS protocol before
    # its connection_made
    transport.pause_reading()
    transport.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, transport)
    resumed = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        made.cancel()
        resumed.cancel()
        raise
    app_transport: asyncio.Transport = tls._app_transport
    return app_transport
