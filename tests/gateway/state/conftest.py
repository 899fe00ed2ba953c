"""The state store's engines: each behavioural test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from maagw_testing.audit import PgUnavailable, start_scratch_pg, stop_scratch_pg
from maagw_testing.services import unavailable
from maagw_testing.state import Engine, reset_state_tables, sqlite_engine


@pytest.fixture(scope="module")
def state_pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for this test module, dropped afterwards."""
    try:
        url = start_scratch_pg()
    except PgUnavailable as exc:
        unavailable(str(exc))
    yield url
    stop_scratch_pg(url)


@pytest.fixture
def pg_engine(state_pg_url: str) -> Engine:
    """The PostgreSQL state store, its tables dropped before the test."""
    asyncio.run(reset_state_tables(state_pg_url))
    return Engine("postgres", state_pg_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """An empty state store location, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_engine(tmp_path)
    pg: Engine = request.getfixturevalue("pg_engine")
    return pg
