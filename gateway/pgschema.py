"""Versioned schema migrations on PostgreSQL, shared by the audit log and the state store.

A store lists its migrations in order, each a list of SQL statements; table
``<name>_schema_version`` records which have run. ``migrate`` runs the missing ones
in one transaction under a transaction-scoped advisory lock, so that several gateway
instances starting at once migrate the schema once, and a second start finds nothing
to do. A database migrated by a newer gateway is refused (``newer``), not guessed at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def migrate(
    con: Any,
    *,
    name: str,
    lock_key: int,
    migrations: Sequence[Sequence[str]],
    newer: Callable[[int], Exception],
    applied_at: str | None = None,
) -> int:
    """Bring schema ``name`` up to ``len(migrations)`` on asyncpg connection ``con``.

    Returns the version found before migrating. ``newer(version)`` is raised when the
    database is ahead of this gateway.
    """
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        await con.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = int(
            await con.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {name}_schema_version")  # noqa: S608
        )
        if current > len(migrations):
            raise newer(current)
        when = applied_at or datetime.now(UTC).isoformat()
        for version in range(current + 1, len(migrations) + 1):
            for stmt in migrations[version - 1]:
                await con.execute(stmt)
            await con.execute(
                f"INSERT INTO {name}_schema_version VALUES ($1, $2)",  # noqa: S608
                version,
                when,
            )
            log.info(f"{name}_schema_migrated", backend="postgresql", version=version)
        return current
