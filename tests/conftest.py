"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from gateway.config.models import Settings
from gateway.relay.topology import Names
from maagw_testing.broker import RABBITMQ_URL, delete_topology, provision_pair, require_service


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts with structlog's defaults, whatever a CLI command configured before.

    A command run in-process (CliRunner) configures logging, perhaps at WARNING; a later
    test capturing logs must still see every line.
    """
    structlog.reset_defaults()


@pytest.fixture
def rabbitmq() -> str:
    """The URL of a reachable RabbitMQ (skips, or fails in CI, when there is none)."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


@pytest.fixture
async def pair(tmp_path: Path, rabbitmq: str) -> AsyncIterator[dict[str, Settings]]:
    """Configuration of two administrations, XA and XB; their broker objects deleted after."""
    settings = provision_pair(tmp_path)
    yield settings
    for s in settings.values():
        await delete_topology(rabbitmq, Names(s.broker.prefix), list(s.partners))
