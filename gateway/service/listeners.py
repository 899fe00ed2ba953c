"""Listening sockets: bound at once, served later, a port in use said in plain words."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable

from gateway.errors import ConfigError, ErrorCode


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    setting: str,
    backlog: int = 128,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Bind and listen on ``host:port`` now; serve later (``Server.start_serving``).

    A port in use is a ``ConfigError`` naming the setting (``CONFIG_PORT_IN_USE``),
    never a traceback.
    """
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=backlog,
            ssl=ssl_context,
            start_serving=False,
        )
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        raise ConfigError(
            f"[{setting}] {host}:{port}: "
            + ("address already in use (another process listens there)" if in_use else str(exc)),
            code=ErrorCode.CONFIG_PORT_IN_USE if in_use else ErrorCode.CONFIG_LISTEN_FAILED,
        ) from None
    # asyncio would listen only when serving starts; until a socket listens, another
    # process may bind the same port too (SO_REUSEADDR) and one of them would fail late
    for sock in server.sockets:
        with socket.socket(fileno=os.dup(sock.fileno())) as same:
            same.listen(backlog)
    return server


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (a token may travel in clear there)."""
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")
