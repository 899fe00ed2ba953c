"""Fixtures shared by the whole suite, each defined here once.

Services and tools (RabbitMQ, PostgreSQL, xmlsec1) skip the tests that need them on a
workstation without them, and fail those tests in CI (see ``maagw_testing.services``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from gateway.config.models import Settings
from gateway.relay.topology import Names
from maagw_testing.audit import (
    EcSigner,
    PgUnavailable,
    reset_audit_tables,
    start_scratch_pg,
    stop_scratch_pg,
)
from maagw_testing.broker import RABBITMQ_URL, delete_topology, provision_pair
from maagw_testing.services import require_service, require_tool, unavailable


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


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this session, dropped afterwards."""
    try:
        url = start_scratch_pg()
    except PgUnavailable as exc:
        unavailable(str(exc))
    yield url
    stop_scratch_pg(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty audit store, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'audit.db'}"
        return
    url: str = request.getfixturevalue("pg_url")
    await reset_audit_tables(url)
    yield url


@pytest.fixture(scope="session")
def checkpoint_signer() -> EcSigner:
    """A throwaway key and certificate that sign audit checkpoints."""
    return EcSigner.generate()


@pytest.fixture(scope="session")
def xmlsec1() -> str:
    """The path of the xmlsec1 tool (the reference implementation the interop tests compare with)."""
    return require_tool("xmlsec1")
