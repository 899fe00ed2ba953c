"""The gateway's own state in PostgreSQL (asyncpg): several instances share one database.

Same tables, calls and semantics as the SQLite store (gateway/state/sqlite.py); what
differs is how they hold across instances:

- **claims** are taken with ``INSERT … ON CONFLICT DO UPDATE … WHERE`` (the row is
  replaced only when it is ``uncertain`` or a stale ``claimed``), so of two instances
  claiming one (sender, message id) at once exactly one gets ``claimed``: the other
  waits on the row lock and then sees ``in_flight`` or ``published``. Each claim
  carries its owner (instance) and boot (process run); ``take_over_claims`` touches
  only this owner's earlier runs, never another live instance's claims.
- **group commit**: calls that arrive together are run by one task in one transaction
  on one pooled connection, and all return after that one commit. When one of them
  fails, the transaction is rolled back and each call runs again in its own, so that
  only the failing call fails (cheaper than a savepoint per call, two round trips each).
- **health**: a lost connection or a database that refuses writes (shut down, failed
  over, out of resources) fails the batch with ``StoreError``, turns readiness false
  (logged once per episode) and a probe write every few seconds notices the recovery;
  the pool opens a fresh connection for the next batch. A call's own SQL error fails
  that call alone and is no health matter. Callers retry with backoff: the pipeline
  puts a message whose store call failed on a delay queue (gateway/pipeline/settle.py).
- **schema**: versioned migrations (gateway/pgschema.py, shared with the audit log),
  table ``state_schema_version``; indexes on the time columns the housekeeping deletes by.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog

from gateway.errors import ErrorCode, GatewayError, StoreError
from gateway.health import Health
from gateway.pgschema import migrate
from gateway.state.store import Claim, DeadLetter
from gateway.tasks import spawn

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: a call run inside the batch transaction on its connection
Call = Callable[[Any], Awaitable[Any]]

_LOCK_KEY = 0x6D61_6167_7773_7461  # "maagwsta": serialises state schema migrations


_MIGRATIONS: list[list[str]] = [
    [  # 1: the tables of the SQLite store, owners included from the start
        """CREATE TABLE outbox (
            message_id TEXT PRIMARY KEY, partner TEXT NOT NULL, digest TEXT NOT NULL,
            signed BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX outbox_created ON outbox(created)",
        """CREATE TABLE claims (
            sender TEXT NOT NULL, message_id TEXT NOT NULL, digest TEXT NOT NULL,
            state TEXT NOT NULL, receipt_id TEXT, claimed DOUBLE PRECISION NOT NULL,
            owner TEXT, boot TEXT, PRIMARY KEY (sender, message_id))""",
        "CREATE INDEX claims_claimed ON claims(claimed)",
        # take_over_claims looks only at claims still being published
        "CREATE INDEX claims_open ON claims(owner) WHERE state = 'claimed'",
        """CREATE TABLE dead (
            id BIGSERIAL PRIMARY KEY, message_id TEXT, partner TEXT, direction TEXT NOT NULL,
            code TEXT NOT NULL, reason TEXT NOT NULL, properties TEXT NOT NULL,
            body BYTEA NOT NULL, dead_at DOUBLE PRECISION NOT NULL,
            replayed_at DOUBLE PRECISION)""",
        """CREATE TABLE requests (
            agreement TEXT NOT NULL, requester TEXT NOT NULL, message_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL, PRIMARY KEY (agreement, requester, message_id))""",
        "CREATE TABLE probe (id INTEGER PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
    ],
    [  # 2: the instances' leases: a claim of an instance whose lease ran out is taken over
        """CREATE TABLE leases (
            owner TEXT NOT NULL, boot TEXT NOT NULL, renewed DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (owner, boot))""",
    ],
]


#: an instance that has not renewed its lease for this long is dead: its claims in flight
#: are taken over (marked as possible duplicates); seconds, not minutes. Leases are kept on
#: the database's clock, so that instances on hosts whose clocks differ agree on them
LEASE_SECONDS = 10.0


#: how often a live instance renews its lease
RENEW_SECONDS = 2.0


def _asyncpg() -> Any:
    # imported here: a SQLite-only installation need not load asyncpg
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    return asyncpg


def _connection_failure(exc: BaseException) -> bool:
    """The database or the connection failed (health), not one call's SQL."""
    pg = _asyncpg()
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | pg.InterfaceError
        | pg.PostgresConnectionError
        | pg.OperatorInterventionError  # terminated backend, shutdown, cannot connect now
        | pg.InsufficientResourcesError  # disk full, out of memory, too many connections
        | pg.ReadOnlySQLTransactionError  # a standby after a failover
        | pg.InternalClientError,  # the connection broke under an operation: unusable
    )


class _Unavailable(Exception):
    """No connection to be had (the server is down, refuses connections, or is full)."""


def _rows(status: str) -> int:
    """The row count of a command status such as ``DELETE 3``."""
    return int(status.split()[-1])


class PostgresStateStore:
    """The state store on PostgreSQL; open with ``await PostgresStateStore.open(url)``.

    ``owner`` names the gateway instance whose claims these are and ``boot`` this run
    of it; see ``take_over_claims``.
    """

    def __init__(self, pool: Any, url: str, *, owner: str = "-", boot: str = "-") -> None:
        self._pool = pool
        self.url = url
        self.owner = owner
        self.boot = boot
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self.health = Health("state", self.probe)
        self.lease_seconds = LEASE_SECONDS
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, owner: str = "-", boot: str = "-") -> PostgresStateStore:
        pg = _asyncpg()
        try:
            # bounded connects and statements: a database that stops answering is a
            # failure to report (readiness, a retry), not a wait without end
            pool = await pg.create_pool(url, min_size=1, max_size=2, timeout=10, command_timeout=30)
        except (OSError, TimeoutError, pg.PostgresError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL for the state store: {exc}",
                code=ErrorCode.STORE_UNAVAILABLE,
            ) from exc
        store = cls(pool, url, owner=owner, boot=boot)
        try:
            async with pool.acquire() as con:
                await migrate(
                    con,
                    name="state",
                    lock_key=_LOCK_KEY,
                    migrations=_MIGRATIONS,
                    newer=lambda version: StoreError(
                        f"state schema version {version} is newer than this gateway knows"
                    ),
                )
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, GatewayError) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"PostgreSQL state store: {exc}") from exc
        await store.renew_lease()
        store._renewer = spawn(store._keep_lease(), name="state-lease")
        return store

    async def renew_lease(self) -> None:
        """Say that this instance is alive (its claims in flight are its own for a lease)."""
        await self._tx(
            lambda con: con.execute(
                "INSERT INTO leases (owner, boot, renewed) "
                "VALUES ($1, $2, EXTRACT(EPOCH FROM clock_timestamp())) "
                "ON CONFLICT (owner, boot) DO UPDATE SET renewed = EXCLUDED.renewed",
                self.owner,
                self.boot,
            )
        )

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self.renew_lease()
            except GatewayError as exc:  # the store's health reports the episode
                log.debug("lease_not_renewed", code=exc.code, reason=exc.reason)

    async def probe(self) -> None:
        """A small write, to learn whether the store can commit again."""
        await self._tx(
            lambda con: con.execute(
                "INSERT INTO probe VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                time.time(),
            )
        )

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        self._closed = True
        self.health.stop()
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        await self._pool.close()

    async def _tx(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` in a transaction that is committed before this returns.

        Group commit: calls that arrive while a batch is under way run together in the
        next transaction and return after its commit (see ``_run_batch``).
        """
        if self._closed:
            raise StoreError(f"state store {self._where()} closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        result: T = await asyncio.shield(future)
        return result

    def _where(self) -> str:
        """The database, without a password that the URL may carry."""
        return self.url.rsplit("@", 1)[-1]

    async def _drain(self) -> None:
        batch: list[tuple[Call, asyncio.Future[Any]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await self._commit_batch([fn for fn, _ in batch])
                except Exception as exc:
                    reason = f"state store {self._where()}: {exc}"
                    outcomes = [(False, StoreError(reason)) for _ in batch]
                    if isinstance(exc, _Unavailable) or _connection_failure(exc):
                        self.health.failed(ErrorCode.STORE_FAILED, reason)
                else:
                    self.health.succeeded()
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
                batch = []
        finally:
            for _, future in batch + self._pending:
                if not future.done():
                    future.set_exception(StoreError(f"state store {self._where()} closed"))
            self._pending = []
            self._drainer = None

    async def _commit_batch(self, fns: list[Call]) -> list[tuple[bool, Any]]:
        """Run ``fns`` in one transaction; their outcomes (a lost connection raises)."""
        pg = _asyncpg()
        outcomes: list[tuple[bool, Any]] = []
        try:
            con = await self._pool.acquire()
        except Exception as exc:
            raise _Unavailable(str(exc)) from exc
        try:
            await self._run_batch(con, fns, outcomes, pg)
        finally:
            await self._pool.release(con)
        return outcomes

    async def _run_batch(
        self, con: Any, fns: list[Call], outcomes: list[tuple[bool, Any]], pg: Any
    ) -> None:
        """All of ``fns`` in one transaction; if one fails, each again in its own.

        Savepoints would cost two round trips per call; a failing call is rare (a bug or
        a conflict), so the batch first runs without them, and only when a call fails is
        the transaction rolled back and every call run alone, so that the failure is its
        caller's only. Nothing of the first run was committed.
        """
        try:
            async with con.transaction():
                results = [await fn(con) for fn in fns]
        except Exception as exc:
            if _connection_failure(exc) or len(fns) == 1:
                if _connection_failure(exc):
                    raise  # the whole batch is lost with its connection
                outcomes.append((False, self._error(exc, pg)))
                return
        else:
            outcomes.extend((True, r) for r in results)
            return
        for fn in fns:
            try:
                async with con.transaction():
                    result = await fn(con)
                outcomes.append((True, result))  # only once committed
            except Exception as exc:
                if _connection_failure(exc):
                    raise
                outcomes.append((False, self._error(exc, pg)))

    def _error(self, exc: Exception, pg: Any) -> Exception:
        """What the caller of a failed call gets: a database error as a StoreError."""
        if isinstance(exc, pg.PostgresError):
            return StoreError(f"state store {self._where()}: {exc}")
        return exc

    # -- outbox ---------------------------------------------------------------------------

    async def outbox_get(self, message_id: str) -> tuple[bytes, str] | None:
        """The signed bytes and digest stored for a message, if it was signed before."""

        async def q(con: Any) -> tuple[bytes, str] | None:
            row = await con.fetchrow(
                "SELECT signed, digest FROM outbox WHERE message_id = $1", message_id
            )
            return (bytes(row[0]), str(row[1])) if row else None

        return await self._tx(q)

    async def outbox_put(self, message_id: str, partner: str, signed: bytes, digest: str) -> None:
        """Store the signed envelope durably before its first attempt."""
        await self._tx(
            lambda con: con.execute(
                "INSERT INTO outbox VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (message_id) DO NOTHING",
                message_id,
                partner,
                digest,
                signed,
                time.time(),
            )
        )

    # -- inbound duplicate claims -------------------------------------------------------------

    async def claim(
        self, sender: str, message_id: str, digest: str, *, stale_after: float
    ) -> Claim:
        """Claim (sender, message id) atomically across instances before publishing.

        As the SQLite store: ``claimed`` (publish, then ``mark_published`` or ``release``),
        ``published`` (a duplicate) or ``in_flight``; an ``uncertain`` claim, or a
        ``claimed`` one older than ``stale_after`` seconds, is taken over and marked as a
        possible duplicate.
        """

        async def q(con: Any) -> Claim:
            while True:
                now = time.time()
                row = await con.fetchrow(
                    "INSERT INTO claims AS c "
                    "(sender, message_id, digest, state, receipt_id, claimed, owner, boot) "
                    "VALUES ($1, $2, $3, 'claimed', NULL, $4, $5, $6) "
                    "ON CONFLICT (sender, message_id) DO UPDATE SET digest = EXCLUDED.digest, "
                    "state = 'claimed', receipt_id = NULL, claimed = EXCLUDED.claimed, "
                    "owner = EXCLUDED.owner, boot = EXCLUDED.boot "
                    "WHERE c.state = 'uncertain' OR (c.state = 'claimed' AND (c.claimed < $7 "
                    # the claim's instance let its lease run out: it died while publishing
                    "OR (c.owner IS NOT NULL AND c.boot IS NOT NULL AND NOT EXISTS ("
                    "SELECT 1 FROM leases l WHERE l.owner = c.owner AND l.boot = c.boot "
                    "AND l.renewed >= EXTRACT(EPOCH FROM clock_timestamp()) - $8)))) "
                    "RETURNING (xmax = 0) AS inserted",
                    sender,
                    message_id,
                    digest,
                    now,
                    self.owner,
                    self.boot,
                    now - stale_after,
                    self.lease_seconds,
                )
                if row is not None:
                    # a replaced claim may have been published: mark the re-publish
                    return Claim("claimed", digest, None, possible_duplicate=not row["inserted"])
                held = await con.fetchrow(
                    "SELECT digest, state, receipt_id FROM claims "
                    "WHERE sender = $1 AND message_id = $2",
                    sender,
                    message_id,
                )
                if held is None:  # released between the two statements: claim again
                    continue
                if held["state"] == "published":
                    return Claim("published", str(held["digest"]), held["receipt_id"])
                return Claim("in_flight", str(held["digest"]), None)

        return await self._tx(q)

    async def take_over_claims(self) -> int:
        """Claims left ``claimed`` by an earlier run of this owner become ``uncertain``.

        As the SQLite store; claims of other owners (live instances) are left alone.
        """
        return await self._tx(
            lambda con: _count(
                con.execute(
                    "UPDATE claims SET state = 'uncertain' WHERE state = 'claimed' "
                    "AND (owner IS NULL OR (owner = $1 AND (boot IS NULL OR boot <> $2)))",
                    self.owner,
                    self.boot,
                )
            )
        )

    async def mark_published(self, sender: str, message_id: str, receipt_id: str) -> None:
        await self._tx(
            lambda con: con.execute(
                "UPDATE claims SET state = 'published', receipt_id = $1 "
                "WHERE sender = $2 AND message_id = $3",
                receipt_id,
                sender,
                message_id,
            )
        )

    async def release(self, sender: str, message_id: str, *, uncertain: bool = False) -> None:
        """Give up a claim whose publish failed (``uncertain``: it may have been published)."""
        if uncertain:
            sql = (
                "UPDATE claims SET state = 'uncertain' "
                "WHERE sender = $1 AND message_id = $2 AND state = 'claimed'"
            )
        else:
            sql = "DELETE FROM claims WHERE sender = $1 AND message_id = $2 AND state = 'claimed'"
        await self._tx(lambda con: con.execute(sql, sender, message_id))

    async def expire_claims(self, older_than: float) -> int:
        """Forget published claims older than the retention (seconds since the epoch)."""
        return await self._tx(
            lambda con: _count(
                con.execute(
                    "DELETE FROM claims WHERE state = 'published' AND claimed < $1", older_than
                )
            )
        )

    async def housekeep(self, now: float, window: float, *, chunk: int = 5000) -> dict[str, int]:
        """Forget what can no longer matter, as the SQLite store; rows go ``chunk`` at a time."""
        gone = {"claims": 0, "outbox": 0}
        statements = {
            "claims": (
                "DELETE FROM claims WHERE (sender, message_id) IN "
                "(SELECT sender, message_id FROM claims WHERE claimed < $1 LIMIT $2)",
                now - window,
            ),
            "outbox": (
                "DELETE FROM outbox WHERE message_id IN "
                "(SELECT message_id FROM outbox WHERE created < $1 LIMIT $2)",
                now - 2 * window,
            ),
        }
        for table, (sql, before) in statements.items():
            delete = functools.partial(_delete_some, sql=sql, args=(before, chunk))
            while True:
                n = await self._tx(delete)
                gone[table] += n
                if n < chunk:
                    break
        # the leases of runs long gone (a lease matters for seconds; its claims for the window)
        await self._tx(
            lambda con: con.execute("DELETE FROM leases WHERE renewed < $1", now - window)
        )
        return gone

    # -- known requests -----------------------------------------------------------------

    async def remember_request(self, agreement: str, requester: str, message_id: str) -> None:
        """Record a request sent by ``requester`` under ``agreement``."""
        await self._tx(
            lambda con: con.execute(
                "INSERT INTO requests VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                agreement,
                requester,
                message_id,
                time.time(),
            )
        )

    async def knows_request(self, agreement: str, requester: str, message_id: str) -> bool:
        """Whether ``requester`` sent request ``message_id`` under ``agreement``."""

        async def q(con: Any) -> bool:
            found = await con.fetchval(
                "SELECT 1 FROM requests WHERE agreement = $1 AND requester = $2 "
                "AND message_id = $3",
                agreement,
                requester,
                message_id,
            )
            return found is not None

        return await self._tx(q)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_put(
        self,
        *,
        message_id: str | None,
        partner: str | None,
        direction: str,
        code: str,
        reason: str,
        properties: Mapping[str, Any],
        body: bytes,
    ) -> int:
        """Keep a copy of a dead-lettered message; returns its id."""

        async def q(con: Any) -> int:
            return int(
                await con.fetchval(
                    "INSERT INTO dead (message_id, partner, direction, code, reason, "
                    "properties, body, dead_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "RETURNING id",
                    message_id,
                    partner,
                    direction,
                    code,
                    reason,
                    json.dumps(properties, default=str, sort_keys=True),
                    body,
                    time.time(),
                )
            )

        return await self._tx(q)

    async def dead_list(self, limit: int = 100) -> list[DeadLetter]:
        async def q(con: Any) -> list[DeadLetter]:
            rows = await con.fetch("SELECT * FROM dead ORDER BY id DESC LIMIT $1", limit)
            return [_dead(tuple(r)) for r in rows]

        return await self._tx(q)

    async def dead_get(self, dead_id: int) -> DeadLetter | None:
        async def q(con: Any) -> DeadLetter | None:
            row = await con.fetchrow("SELECT * FROM dead WHERE id = $1", dead_id)
            return _dead(tuple(row)) if row else None

        return await self._tx(q)

    async def dead_mark_replayed(self, dead_id: int) -> None:
        await self._tx(
            lambda con: con.execute(
                "UPDATE dead SET replayed_at = $1 WHERE id = $2", time.time(), dead_id
            )
        )

    async def dead_claim_replay(self, dead_id: int, *, again: bool = False) -> bool:
        """Record a replay of ``dead_id`` now; unless ``again``, only if never replayed."""
        sql = "UPDATE dead SET replayed_at = $1 WHERE id = $2"
        if not again:
            sql += " AND replayed_at IS NULL"
        n = await self._tx(lambda con: _count(con.execute(sql, time.time(), dead_id)))
        return n == 1

    async def dead_unclaim_replay(self, dead_id: int, previous: float | None) -> None:
        """Undo ``dead_claim_replay`` (the publish failed): back to the previous replay time."""
        await self._tx(
            lambda con: con.execute(
                "UPDATE dead SET replayed_at = $1 WHERE id = $2", previous, dead_id
            )
        )


async def _delete_some(con: Any, *, sql: str, args: tuple[float, int]) -> int:
    return _rows(await con.execute(sql, *args))


async def _count(status: Awaitable[str]) -> int:
    return _rows(await status)


def _dead(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(
        id=int(row[0]),
        message_id=row[1],
        partner=row[2],
        direction=row[3],
        code=row[4],
        reason=row[5],
        properties=json.loads(row[6]),
        body=bytes(row[7]),
        dead_at=row[8],
        replayed_at=row[9],
    )
