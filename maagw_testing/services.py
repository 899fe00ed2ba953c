"""Whether a missing service or tool skips a test (on a workstation) or fails it (in CI)."""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

HINTS = {
    "RabbitMQ": "start it with `rabbitmq-server -detached` (or run `make test`, which starts it)",
    "PostgreSQL": "start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start` "
    "(or run `make test`, which starts it)",
    "xmlsec1": "apt-get install -y xmlsec1",
}


def services_required() -> bool:
    """True in CI (``CI=true``) or with ``MAAGW_REQUIRE_SERVICES=1``: missing services fail."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or bool(
        os.environ.get("MAAGW_REQUIRE_SERVICES")
    )


def unavailable(message: str) -> NoReturn:
    """Fail the test when services are required, else skip it, saying what is missing."""
    if services_required():
        pytest.fail(message)
    pytest.skip(message)


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) if nothing listens at host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        unavailable(f"{name} is not reachable at {host}:{port}: {HINTS.get(name, '')}")


def require_tool(name: str) -> str:
    """The path of a command-line tool, skipping (or failing) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed: {HINTS.get(name, '')}")
    return path
