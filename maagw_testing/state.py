"""The state store under test, on either engine: open it, and read or seed its tables raw.

``Engine`` lets one behavioural test run against SQLite and PostgreSQL: SQL is written
with ``?`` placeholders and runs on a separate connection, so what it reads is what
another process would see (committed rows only).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.state.store import StateStore, open_state

#: every table the PostgreSQL state store creates, dropped between tests
STATE_TABLES = ("outbox", "claims", "dead", "requests", "probe", "leases", "state_schema_version")


def _dollar(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2 …``."""
    count = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


async def reset_state_tables(url: str) -> None:
    """Drop the state store's tables, so that the next open starts from an empty schema."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    con = await asyncpg.connect(url)
    try:
        await con.execute(f"DROP TABLE IF EXISTS {', '.join(STATE_TABLES)}")
    finally:
        await con.close()


class Engine:
    """One state store location (``url``: a PostgreSQL URL or an SQLite file path)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.pg = name == "postgres"
        #: a few connections at a time: the server's connection slots are shared
        self._connections = asyncio.Semaphore(2)

    async def _connect(self) -> Any:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        return await asyncpg.connect(self.url)

    async def open(self, *, owner: str = "-", boot: str = "-") -> StateStore:
        return await open_state(self.url, owner=owner, boot=boot)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` as another connection sees them."""
        if self.pg:
            async with self._connections:
                con = await self._connect()
                try:
                    return [tuple(r) for r in await con.fetch(_dollar(sql), *args)]
                finally:
                    await con.close()

        def read() -> list[tuple[Any, ...]]:
            with sqlite3.connect(self.url) as db:
                return [tuple(r) for r in db.execute(sql, args)]

        return await asyncio.to_thread(read)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` with ``sql`` and commit, from another connection."""
        if self.pg:
            async with self._connections:
                con = await self._connect()
                try:
                    await con.executemany(_dollar(sql), rows)
                finally:
                    await con.close()
            return

        def write() -> None:
            with sqlite3.connect(self.url) as db:
                db.executemany(sql, rows)

        await asyncio.to_thread(write)

    def call(self, *statements: str) -> Any:
        """A raw call for the store's ``_tx``: runs ``statements`` in order on its connection."""
        if self.pg:

            async def run_pg(con: Any) -> None:
                for sql in statements:
                    await con.execute(sql)

            return run_pg

        def run_sqlite(db: sqlite3.Connection) -> None:
            for sql in statements:
                db.execute(sql)

        return run_sqlite


def sqlite_engine(directory: Path) -> Engine:
    return Engine("sqlite", str(directory / "state.db"))
