"""One leader per administration for the work only one instance may do.

Several instances of one administration share PostgreSQL. Signing the audit log's
checkpoints and fetching partners' CRLs are done by one of them at a time: the one holding a
PostgreSQL session advisory lock keyed by the gateway id (``pg_try_advisory_lock``). The lock
lives as long as the session that took it: when the leader dies, or its connection to the
database is lost, PostgreSQL releases it and another instance takes it at its next try, a
second or so later. No coordinator of our own: the database decides.

Without PostgreSQL (the audit log on SQLite: one instance by construction) the process is
the leader from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from gateway import tasks

log = structlog.get_logger(__name__)


#: how often a follower tries to take the lock, and the leader checks that it still holds it
TRY_SECONDS = 1.0


#: how long one connect or statement may take before the try counts as failed
STATEMENT_TIMEOUT = 5.0


def lock_key(gateway_id: str) -> int:
    """The advisory lock's key for an administration (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"maagw-leader:{gateway_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership:
    """Whether this process is its administration's leader, kept current in the background.

    ``url``: the PostgreSQL the instances share, or None (a single instance: always leader).
    ``on_change`` is called with the new state when it changes.
    """

    def __init__(
        self,
        url: str | None,
        gateway_id: str,
        *,
        instance: str = "-",
        on_change: Callable[[bool], None] | None = None,
        try_seconds: float = TRY_SECONDS,
    ) -> None:
        self.url = url
        self.key = lock_key(gateway_id)
        self.instance = instance
        self._on_change = on_change
        self._try_seconds = try_seconds
        self._leads = url is None
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def leads(self) -> bool:
        """True while this process holds the lock (or there is nothing to share)."""
        return self._leads

    def start(self) -> None:
        """Start trying (and, once leader, keep checking) in the background."""
        if self.url is not None and self._task is None:
            self._task = tasks.spawn(self._keep(), name="leadership")

    async def stop(self) -> None:
        """Stop; a held lock is released with the session."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()
        self._set(self.url is None)

    async def _keep(self) -> None:
        while True:
            try:
                await self._round()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if self._leads:
                    log.warning("leadership_lost", instance=self.instance, error=str(exc))
                await self._drop()
                self._set(False)
            await asyncio.sleep(self._try_seconds)

    async def _round(self) -> None:
        if self._connection is None or self._connection.is_closed():
            self._set(False)
            self._connection = await asyncpg.connect(
                self.url, timeout=STATEMENT_TIMEOUT, command_timeout=STATEMENT_TIMEOUT
            )
        if self._leads:
            # still ours while the session lives: check that it does
            await self._connection.fetchval("SELECT 1")
            return
        taken = await self._connection.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
        if taken:
            log.info("leadership_taken", instance=self.instance)
        self._set(bool(taken))

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STATEMENT_TIMEOUT):
                    await connection.close()

    def _set(self, leads: bool) -> None:
        if leads != self._leads:
            self._leads = leads
            if self._on_change is not None:
                self._on_change(leads)
