"""The gateway's own state in SQLite: outbox, duplicate claims, dead letters, known requests.

- **outbox**: the signed bytes of every envelope sent, stored before the first attempt,
  so that every retry (also after a restart) sends identical bytes.
- **claims**: (sender, message id) of inbound envelopes, claimed atomically before
  publishing and marked published after the broker confirmed; this is the duplicate
  and replay store, kept for ``retention`` (default 7 days). Each claim carries its
  owner (the gateway instance) and the boot id of the process that made it, so a
  restarted process takes over its dead predecessor's claims at once.
- **dead**: a copy of every dead-lettered message, since a queue cannot be browsed.
- **requests**: ids of requests exchanged under an agreement, so that a reply that
  answers no known request is refused.

SQLite is the default engine, for one instance (``gateway/state/postgres.py`` serves
several). All calls run on one worker thread (SQLite connections are not shared across
threads); each call is committed before it returns, and calls that arrive together
share one transaction and one commit (group commit).

Every commit reports to ``health`` (``gateway.health.Health``): a failing disk is
logged once per episode, readiness turns false, and a probe write every few seconds
notices when the disk has room again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ErrorCode, GatewayError, StoreError
from gateway.health import Health
from gateway.state.store import Claim, DeadLetter

T = TypeVar("T")


SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    digest TEXT NOT NULL,
    signed BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    receipt_id TEXT,
    claimed REAL NOT NULL,
    PRIMARY KEY (sender, message_id)
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created);
CREATE INDEX IF NOT EXISTS claims_claimed ON claims(claimed);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT,
    partner TEXT,
    direction TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL,
    dead_at REAL NOT NULL,
    replayed_at REAL
);
CREATE TABLE IF NOT EXISTS requests (
    agreement TEXT NOT NULL,
    requester TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (agreement, requester, message_id)
);
CREATE TABLE IF NOT EXISTS probe (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
"""


#: columns added to existing tables after their first release (table, column, type)
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("claims", "owner", "TEXT"),
    ("claims", "boot", "TEXT"),
)


def _delete_some(db: sqlite3.Connection, *, sql: str, args: tuple[float, int]) -> int:
    return int(db.execute(sql, args).rowcount)


#: SQLite result codes that mean the disk or the database file failed, not one call's SQL
_IO_ERRORS = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PROTOCOL",
    "SQLITE_NOLFS",
    "SQLITE_PERM",
)


def _io_failure(exc: BaseException) -> bool:
    """An error of the disk or the database file (health), not of one call (a bug, a constraint)."""
    name = getattr(exc, "sqlite_errorname", None)
    return isinstance(exc, sqlite3.Error) and isinstance(name, str) and name.startswith(_IO_ERRORS)


class SqliteStateStore:
    """The state store; open with ``await SqliteStateStore.open(path)``.

    ``owner`` names the gateway instance (process) whose claims these are and ``boot``
    this run of it; see ``take_over_claims``.
    """

    def __init__(self, path: Path, *, owner: str = "-", boot: str = "-") -> None:
        self.path = path
        self.owner = owner
        self.boot = boot
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maagw-store")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.health = Health("state", self.probe)

    @classmethod
    async def open(cls, path: Path, *, owner: str = "-", boot: str = "-") -> SqliteStateStore:
        store = cls(path, owner=owner, boot=boot)
        await store._run(store._open)
        return store

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._db = db

    async def probe(self) -> None:
        """A small write, to learn whether the store can commit again."""
        await self._tx(
            lambda db: db.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),))
        )

    async def close(self) -> None:
        self.health.stop()
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}") from exc

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction that is committed before this returns.

        Group commit: calls that arrive while a commit is under way are run together in
        the next transaction, each inside its own savepoint (a failing call is rolled
        back alone), and all of them return after that one commit. Under load this turns
        one fsync per call into one per batch; durability per call is unchanged.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes, io_failed = await self._run(
                        self._commit_batch, [fn for fn, _ in batch]
                    )
                except Exception as exc:
                    # _run already made an sqlite3 error a StoreError: keep its reason
                    reason = exc.reason if isinstance(exc, GatewayError) else str(exc)
                    outcomes = [(False, StoreError(reason)) for _ in batch]
                    self.health.failed(ErrorCode.STORE_FAILED, reason)
                else:
                    if io_failed is None:
                        self.health.succeeded()
                    else:
                        self.health.failed(ErrorCode.STORE_FAILED, io_failed)
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
                    future.set_exception(StoreError(f"state store {self.path} closed"))
            self._pending = []
            self._drainer = None

    def _commit_batch(
        self, fns: list[Callable[[sqlite3.Connection], Any]]
    ) -> tuple[list[tuple[bool, Any]], str | None]:
        """Run ``fns`` in one transaction; their outcomes, and the reason of a disk failure."""
        assert self._db is not None, "store is not open"
        db = self._db
        outcomes: list[tuple[bool, Any]] = []
        io_failed: str | None = None
        db.execute("BEGIN IMMEDIATE")
        try:
            for fn in fns:
                db.execute("SAVEPOINT one")
                try:
                    outcomes.append((True, fn(db)))
                except Exception as exc:
                    if _io_failure(exc):
                        io_failed = f"state store {self.path}: {exc}"
                    db.execute("ROLLBACK TO one")
                    error = (
                        StoreError(f"state store {self.path}: {exc}")
                        if isinstance(exc, sqlite3.Error)
                        else exc
                    )
                    outcomes.append((False, error))
                db.execute("RELEASE one")
            db.execute("COMMIT")
        except BaseException:
            # a failed COMMIT may leave the transaction open: the next BEGIN would fail
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes, io_failed

    # -- outbox ---------------------------------------------------------------------------

    async def outbox_get(self, message_id: str) -> tuple[bytes, str] | None:
        """The signed bytes and digest stored for a message, if it was signed before."""

        def q(db: sqlite3.Connection) -> tuple[bytes, str] | None:
            row = db.execute(
                "SELECT signed, digest FROM outbox WHERE message_id = ?", (message_id,)
            ).fetchone()
            return (bytes(row[0]), str(row[1])) if row else None

        return await self._tx(q)

    async def outbox_put(self, message_id: str, partner: str, signed: bytes, digest: str) -> None:
        """Store the signed envelope durably before its first attempt."""
        await self._tx(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)",
                (message_id, partner, digest, signed, time.time()),
            ),
        )

    # -- inbound duplicate claims -------------------------------------------------------------

    async def claim(
        self, sender: str, message_id: str, digest: str, *, stale_after: float
    ) -> Claim:
        """Claim (sender, message id) atomically before publishing.

        ``claimed``: this caller owns it and must publish, then ``mark_published`` (or
        ``release`` on failure). ``published``: a duplicate. ``in_flight``: another
        request is publishing it right now (the sender should retry later). A claim older
        than ``stale_after`` seconds that never got published (a crash) is taken over.
        """

        def q(db: sqlite3.Connection) -> Claim:
            now = time.time()
            row = db.execute(
                "SELECT digest, state, receipt_id, claimed FROM claims "
                "WHERE sender = ? AND message_id = ?",
                (sender, message_id),
            ).fetchone()
            stale = row is not None and row[1] == "claimed" and now - row[3] > stale_after
            if row is None or stale or row[1] == "uncertain":
                db.execute(
                    "INSERT OR REPLACE INTO claims "
                    "(sender, message_id, digest, state, receipt_id, claimed, owner, boot) "
                    "VALUES (?, ?, ?, 'claimed', NULL, ?, ?, ?)",
                    (sender, message_id, digest, now, self.owner, self.boot),
                )
                # a stale claim is a crash between publish and its record: it may be out there
                return Claim("claimed", digest, None, possible_duplicate=row is not None)
            if row[1] == "published":
                return Claim("published", str(row[0]), row[2])
            return Claim("in_flight", str(row[0]), None)

        return await self._tx(q)

    async def take_over_claims(self) -> int:
        """Claims left ``claimed`` by an earlier run of this owner: it died while publishing.

        Called at start. Such a publish may have reached the broker, so each claim becomes
        ``uncertain``: the sender's next attempt is published again at once, marked as a
        possible duplicate, instead of waiting for the claim to go stale. Claims without an
        owner (written before owners were recorded) are taken over too. Returns how many.
        """
        return await self._tx(
            lambda db: (
                db.execute(
                    "UPDATE claims SET state = 'uncertain' WHERE state = 'claimed' "
                    "AND (owner IS NULL OR (owner = ? AND (boot IS NULL OR boot <> ?)))",
                    (self.owner, self.boot),
                ).rowcount
            ),
        )

    async def mark_published(self, sender: str, message_id: str, receipt_id: str) -> None:
        await self._tx(
            lambda db: db.execute(
                "UPDATE claims SET state = 'published', receipt_id = ? "
                "WHERE sender = ? AND message_id = ?",
                (receipt_id, sender, message_id),
            ),
        )

    async def release(self, sender: str, message_id: str, *, uncertain: bool = False) -> None:
        """Give up a claim whose publish failed, so the sender's retry is not a duplicate.

        ``uncertain``: the publish was sent but not confirmed; the broker may have it,
        so the next claim is told to mark its publish as a possible duplicate.
        """
        if uncertain:
            sql = (
                "UPDATE claims SET state = 'uncertain' "
                "WHERE sender = ? AND message_id = ? AND state = 'claimed'"
            )
        else:
            sql = "DELETE FROM claims WHERE sender = ? AND message_id = ? AND state = 'claimed'"
        await self._tx(lambda db: db.execute(sql, (sender, message_id)))

    async def expire_claims(self, older_than: float) -> int:
        """Forget published claims older than the retention (seconds since the epoch)."""
        return await self._tx(
            lambda db: (
                db.execute(
                    "DELETE FROM claims WHERE state = 'published' AND claimed < ?", (older_than,)
                ).rowcount
            ),
        )

    async def housekeep(self, now: float, window: float, *, chunk: int = 5000) -> dict[str, int]:
        """Forget what can no longer matter; returns how many rows went, by table.

        ``window`` is how long after its claim an envelope can still be accepted: the
        replay window plus the allowed clock skew (an envelope may be dated ahead).

        - claims older than ``window``, whatever their state: an envelope that old is
          refused as stale before its claim is looked up;
        - outbox entries older than twice ``window`` (a message still retrying then is
          signed anew; the partner has forgotten its claim of the old one by then).

        Known requests (a reply may come months later) and dead letters (an operator
        decides) are kept. Rows go ``chunk`` at a time, each chunk its own short write
        transaction, so that other writers (workers) are never held up for long.
        """
        gone = {"claims": 0, "outbox": 0}
        statements = {
            "claims": (
                "DELETE FROM claims WHERE rowid IN "
                "(SELECT rowid FROM claims WHERE claimed < ? LIMIT ?)",
                now - window,
            ),
            "outbox": (
                "DELETE FROM outbox WHERE rowid IN "
                "(SELECT rowid FROM outbox WHERE created < ? LIMIT ?)",
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
        return gone

    # -- known requests -----------------------------------------------------------------

    async def remember_request(self, agreement: str, requester: str, message_id: str) -> None:
        """Record a request sent by ``requester`` under ``agreement``."""
        await self._tx(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?)",
                (agreement, requester, message_id, time.time()),
            ),
        )

    async def knows_request(self, agreement: str, requester: str, message_id: str) -> bool:
        """Whether ``requester`` sent request ``message_id`` under ``agreement``."""

        def q(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "SELECT 1 FROM requests "
                    "WHERE agreement = ? AND requester = ? AND message_id = ?",
                    (agreement, requester, message_id),
                ).fetchone()
                is not None
            )

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

        def q(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO dead (message_id, partner, direction, code, reason, properties, "
                "body, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    partner,
                    direction,
                    code,
                    reason,
                    json.dumps(properties, default=str, sort_keys=True),
                    body,
                    time.time(),
                ),
            )
            return int(cur.lastrowid or 0)

        return await self._tx(q)

    async def dead_list(self, limit: int = 100) -> list[DeadLetter]:
        return await self._tx(
            lambda db: [
                _dead(r)
                for r in db.execute("SELECT * FROM dead ORDER BY id DESC LIMIT ?", (limit,))
            ],
        )

    async def dead_get(self, dead_id: int) -> DeadLetter | None:
        def q(db: sqlite3.Connection) -> DeadLetter | None:
            row = db.execute("SELECT * FROM dead WHERE id = ?", (dead_id,)).fetchone()
            return _dead(row) if row else None

        return await self._tx(q)

    async def dead_mark_replayed(self, dead_id: int) -> None:
        await self._tx(
            lambda db: db.execute(
                "UPDATE dead SET replayed_at = ? WHERE id = ?", (time.time(), dead_id)
            ),
        )

    async def dead_claim_replay(self, dead_id: int, *, again: bool = False) -> bool:
        """Record a replay of ``dead_id`` now; unless ``again``, only if never replayed.

        Returns whether it was recorded: of two operators replaying one letter at the
        same moment, only one passes.
        """
        sql = "UPDATE dead SET replayed_at = ? WHERE id = ?"
        if not again:
            sql += " AND replayed_at IS NULL"
        return await self._tx(lambda db: db.execute(sql, (time.time(), dead_id)).rowcount == 1)

    async def dead_unclaim_replay(self, dead_id: int, previous: float | None) -> None:
        """Undo ``dead_claim_replay`` (the publish failed): back to the previous replay time."""
        await self._tx(
            lambda db: db.execute(
                "UPDATE dead SET replayed_at = ? WHERE id = ?", (previous, dead_id)
            ),
        )


def _dead(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(
        id=row[0],
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
