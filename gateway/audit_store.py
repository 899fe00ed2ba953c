"""Where the exchange log lives: SQLite (default) and PostgreSQL stores.

A store knows SQL, not policy. Its one write operation, ``write_batch``, takes every
append and evidence item waiting at that moment and commits them in ONE transaction:
inside it the store reads the chain head, chains the new entries onto it and inserts
them, so the chain stays linear even when several processes write to the same
database (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock).

Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a commit has been
fsynced before ``write_batch`` returns (with ``NORMAL``, WAL mode may lose the last
transactions on power loss — an acknowledged exchange without its entry). PostgreSQL
is used with its default ``synchronous_commit=on``.

Entries are append-only at the SQL level too: triggers refuse UPDATE and DELETE on
``audit_entries`` (defence in depth; the hash chain is what proves integrity).

Schema migrations are ordered lists per backend; ``audit_schema_version`` records
which have run.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from gateway.audit_chain import GENESIS, ROW_COLUMNS, Entry, canonical_entry, chain_hash, utc_now
from gateway.errors import AuditError

# S608 is silenced below: SQL is assembled only from constant column names and placeholders;
# values are always bound parameters.
log = structlog.get_logger(__name__)
T = TypeVar("T")

#: an entry waiting to be chained: ROW_COLUMNS[3:17] (event … actor, details as canonical text)
Pending = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    digest: str
    kind: str
    data: bytes
    stored_at: str
    retention_until: str


@dataclass(frozen=True, slots=True)
class EvidenceInfo:
    """What the log knows about one piece of evidence (without its bytes)."""

    digest: str
    kind: str
    size: int
    stored_at: str
    retention_until: str
    purged_at: str | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that entry ``seq`` has hash ``head_hash``."""

    seq: int
    head_hash: str
    time: str
    gateway: str
    signed_bytes: bytes
    signature: bytes
    cert_pem: str


@dataclass(frozen=True, slots=True)
class SearchFilter:
    partner: str | None = None
    agreement: str | None = None
    message_type: str | None = None
    message_id: str | None = None
    event: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 1000


def chain_rows(
    head_seq: int, head_hash: str, time: str, gateway: str, pending: Sequence[Pending]
) -> list[tuple[Any, ...]]:
    """Give each pending entry its seq, time, gateway, prev_hash and hash."""
    rows: list[tuple[Any, ...]] = []
    prev = head_hash
    seq = head_seq
    for p in pending:
        seq += 1
        h = chain_hash(prev, canonical_entry(seq, time, gateway, *p))
        rows.append((seq, time, gateway, *p, prev, h))
        prev = h
    return rows


class Store(Protocol):
    """What ``AuditLog`` needs from a backend."""

    async def write_batch(
        self, gateway: str, entries: Sequence[Pending], evidence: Sequence[EvidenceItem]
    ) -> tuple[int, str]:
        """Commit everything in one transaction; return the new head (seq, hash)."""
        ...

    async def head(self) -> tuple[int, str]: ...
    async def probe(self) -> None:
        """A small write outside the chain (health): raises ``AuditError`` if it fails."""
        ...

    async def add_checkpoint(self, cp: Checkpoint) -> None: ...
    async def checkpoints(self) -> list[Checkpoint]: ...
    async def count(self, from_seq: int, to_seq: int) -> int: ...
    def iter_rows(
        self, from_seq: int, to_seq: int, chunk: int
    ) -> AsyncIterator[list[tuple[Any, ...]]]: ...
    async def search(self, flt: SearchFilter) -> list[Entry]: ...
    async def timeline(self, message_id: str) -> list[Entry]: ...
    async def seq_at_time(self, time: str, *, after: bool) -> int: ...
    async def get_evidence(self, digest: str) -> bytes | None: ...
    async def evidence_info(self, digests: Sequence[str]) -> list[EvidenceInfo]: ...
    async def purge(self, now: str) -> int: ...
    async def close(self) -> None: ...


# --------------------------------------------------------------------------- SQLite

_SQLITE_MIGRATIONS: list[list[str]] = [
    [  # 1: entries, checkpoints, evidence
        """CREATE TABLE audit_entries (
            seq INTEGER PRIMARY KEY, time TEXT NOT NULL, gateway TEXT NOT NULL,
            event TEXT NOT NULL, direction TEXT, partner TEXT, agreement TEXT,
            message_type TEXT, message_id TEXT, correlation_id TEXT,
            envelope_digest TEXT, receipt_digest TEXT, outcome TEXT, code TEXT,
            reason TEXT, actor TEXT, details TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        "CREATE INDEX audit_entries_message_id ON audit_entries(message_id)",
        "CREATE INDEX audit_entries_correlation_id ON audit_entries(correlation_id)",
        "CREATE INDEX audit_entries_partner_time ON audit_entries(partner, time)",
        "CREATE INDEX audit_entries_time ON audit_entries(time)",
        """CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
        """CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries
           BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
        """CREATE TABLE audit_checkpoints (
            id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, head_hash TEXT NOT NULL,
            time TEXT NOT NULL, gateway TEXT NOT NULL, signed_bytes BLOB NOT NULL,
            signature BLOB NOT NULL, cert_pem TEXT NOT NULL)""",
        "CREATE INDEX audit_checkpoints_seq ON audit_checkpoints(seq)",
        """CREATE TABLE audit_evidence (
            digest TEXT PRIMARY KEY, kind TEXT NOT NULL, data BLOB, size INTEGER NOT NULL,
            stored_at TEXT NOT NULL, retention_until TEXT NOT NULL, purged_at TEXT)""",
        "CREATE INDEX audit_evidence_retention ON audit_evidence(retention_until)",
    ],
    [  # 2: a row the health probe writes, to learn whether the store can commit again
        "CREATE TABLE audit_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
    ],
]

_COLS = ", ".join(ROW_COLUMNS)
_INSERT_SQLITE = f"INSERT INTO audit_entries ({_COLS}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"  # noqa: S608


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path.db`` or a plain path -> the file path."""
    if url.startswith("sqlite://"):
        return Path(url.removeprefix("sqlite://"))
    return Path(url)


class SqliteStore:
    """One file, WAL, one writer thread; reads on their own thread and connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite-w")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite-r")
        self._migrate = True
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, *, create: bool = True, migrate: bool = True) -> SqliteStore:
        store = cls(path)
        store._migrate = migrate
        if not create and not await store._in(store._reader, path.exists):
            await store.close()
            raise AuditError(f"{path}: audit database does not exist", code="AUDIT_NOT_FOUND")
        try:
            await store._in(store._writer, store._open_writer)
            await store._in(store._reader, store._open_reader)
        except sqlite3.Error as exc:
            await store.close()
            raise AuditError(f"{path}: {exc}", code="AUDIT_UNAVAILABLE") from exc
        return store

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._wconn = conn
        if not self._migrate:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS audit_schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM audit_schema_version"
            ).fetchone()
            if current > len(_SQLITE_MIGRATIONS):
                raise AuditError(
                    f"{self.path}: schema version {current} is newer than this gateway knows",
                    code="AUDIT_SCHEMA_NEWER",
                )
            for version in range(current + 1, len(_SQLITE_MIGRATIONS) + 1):
                for stmt in _SQLITE_MIGRATIONS[version - 1]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO audit_schema_version VALUES (?, ?)", (version, utc_now()))
                log.info("audit_schema_migrated", backend="sqlite", version=version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _open_reader(self) -> None:
        self._rconn = self._connect()

    def _w(self) -> sqlite3.Connection:
        assert self._wconn is not None, "store is closed"
        return self._wconn

    def _r(self) -> sqlite3.Connection:
        assert self._rconn is not None, "store is closed"
        return self._rconn

    async def write_batch(
        self, gateway: str, entries: Sequence[Pending], evidence: Sequence[EvidenceItem]
    ) -> tuple[int, str]:
        def run() -> tuple[int, str]:
            conn = self._w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                head = _sqlite_head(conn)
                if entries:
                    rows = chain_rows(*head, utc_now(), gateway, entries)
                    conn.executemany(_INSERT_SQLITE, rows)
                    head = (rows[-1][0], rows[-1][-1])
                if evidence:
                    conn.executemany(
                        "INSERT OR IGNORE INTO audit_evidence "
                        "(digest, kind, data, size, stored_at, retention_until) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (e.digest, e.kind, e.data, len(e.data), e.stored_at, e.retention_until)
                            for e in evidence
                        ],
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return head

        return await self._call(self._writer, run)

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        try:
            return await self._in(pool, fn)
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: {exc}", code="AUDIT_STORE_FAILED") from exc

    async def head(self) -> tuple[int, str]:
        return await self._call(self._reader, lambda: _sqlite_head(self._r()))

    async def probe(self) -> None:
        def run() -> None:
            self._w().execute(
                "INSERT OR REPLACE INTO audit_probe (id, at) VALUES (1, ?)", (utc_now(),)
            )

        await self._call(self._writer, run)

    async def add_checkpoint(self, cp: Checkpoint) -> None:
        def run() -> None:
            self._w().execute(
                "INSERT INTO audit_checkpoints "
                "(seq, head_hash, time, gateway, signed_bytes, signature, cert_pem) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    cp.seq,
                    cp.head_hash,
                    cp.time,
                    cp.gateway,
                    cp.signed_bytes,
                    cp.signature,
                    cp.cert_pem,
                ),
            )

        await self._call(self._writer, run)

    async def checkpoints(self) -> list[Checkpoint]:
        def run() -> list[Checkpoint]:
            rows = self._r().execute(
                "SELECT seq, head_hash, time, gateway, signed_bytes, signature, cert_pem "
                "FROM audit_checkpoints ORDER BY seq, id"
            )
            return [Checkpoint(*r) for r in rows]

        return await self._call(self._reader, run)

    async def count(self, from_seq: int, to_seq: int) -> int:
        def run() -> int:
            (n,) = (
                self._r()
                .execute(
                    "SELECT COUNT(*) FROM audit_entries WHERE seq BETWEEN ? AND ?",
                    (from_seq, to_seq),
                )
                .fetchone()
            )
            return int(n)

        return await self._call(self._reader, run)

    async def iter_rows(
        self, from_seq: int, to_seq: int, chunk: int
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        conn = await self._call(self._reader, self._connect)
        try:
            cur = await self._call(
                self._reader,
                lambda: conn.execute(
                    f"SELECT {_COLS} FROM audit_entries WHERE seq BETWEEN ? AND ? ORDER BY seq",  # noqa: S608
                    (from_seq, to_seq),
                ),
            )
            while True:
                rows = await self._call(self._reader, lambda: cur.fetchmany(chunk))
                if not rows:
                    break
                yield rows
        finally:
            await self._in(self._reader, conn.close)

    async def search(self, flt: SearchFilter) -> list[Entry]:
        where, args = _where(flt, "?")
        sql = f"SELECT {_COLS} FROM audit_entries {where} ORDER BY seq LIMIT {int(flt.limit)}"  # noqa: S608
        return await self._call(
            self._reader, lambda: [Entry.from_row(r) for r in self._r().execute(sql, args)]
        )

    async def timeline(self, message_id: str) -> list[Entry]:
        sql = (
            f"SELECT {_COLS} FROM audit_entries WHERE message_id = ? "  # noqa: S608
            f"UNION SELECT {_COLS} FROM audit_entries WHERE correlation_id = ? ORDER BY seq"
        )
        return await self._call(
            self._reader,
            lambda: [Entry.from_row(r) for r in self._r().execute(sql, (message_id, message_id))],
        )

    async def seq_at_time(self, time: str, *, after: bool) -> int:
        sql = (
            "SELECT COALESCE(MIN(seq), (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_entries)) "
            "FROM audit_entries WHERE time >= ?"
            if after
            else "SELECT COALESCE(MAX(seq), 0) FROM audit_entries WHERE time <= ?"
        )
        return await self._call(
            self._reader, lambda: int(self._r().execute(sql, (time,)).fetchone()[0])
        )

    async def get_evidence(self, digest: str) -> bytes | None:
        def run() -> bytes | None:
            row = (
                self._r()
                .execute("SELECT data FROM audit_evidence WHERE digest = ?", (digest,))
                .fetchone()
            )
            return None if row is None or row[0] is None else bytes(row[0])

        return await self._call(self._reader, run)

    async def evidence_info(self, digests: Sequence[str]) -> list[EvidenceInfo]:
        marks = ", ".join("?" * len(digests))

        def run() -> list[EvidenceInfo]:
            if not digests:
                return []
            rows = self._r().execute(
                "SELECT digest, kind, size, stored_at, retention_until, purged_at "  # noqa: S608
                f"FROM audit_evidence WHERE digest IN ({marks}) ORDER BY stored_at",
                list(digests),
            )
            return [EvidenceInfo(*r) for r in rows]

        return await self._call(self._reader, run)

    async def purge(self, now: str) -> int:
        def run() -> int:
            cur = self._w().execute(
                "UPDATE audit_evidence SET data = NULL, purged_at = ? "
                "WHERE retention_until < ? AND data IS NOT NULL",
                (utc_now(), now),
            )
            return cur.rowcount

        return await self._call(self._writer, run)

    async def close(self) -> None:
        for pool, attr in ((self._writer, "_wconn"), (self._reader, "_rconn")):
            conn = getattr(self, attr)
            if conn is not None:
                setattr(self, attr, None)
                await self._in(pool, conn.close)
            pool.shutdown(wait=True)


def _sqlite_head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def _where(flt: SearchFilter, style: str) -> tuple[str, list[Any]]:
    """WHERE clause for a search; ``style`` is ``?`` (SQLite) or ``$`` (PostgreSQL)."""
    clauses: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        mark = "?" if style == "?" else f"${len(args)}"
        clauses.append(sql.replace("%s", mark))

    for column in ("partner", "agreement", "message_type", "message_id", "event", "outcome"):
        value = getattr(flt, column)
        if value is not None:
            add(f"{column} = %s", value)
    if flt.since is not None:
        add("time >= %s", flt.since)
    if flt.until is not None:
        add("time <= %s", flt.until)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


# --------------------------------------------------------------------------- PostgreSQL

_PG_LOCK_KEY = 0x6D61_6167_7761_7564  # "maagwaud": serialises chain appends across gateways

_PG_MIGRATIONS: list[list[str]] = [
    [  # 1: entries, checkpoints, evidence
        """CREATE TABLE audit_entries (
            seq BIGINT PRIMARY KEY, time TEXT NOT NULL, gateway TEXT NOT NULL,
            event TEXT NOT NULL, direction TEXT, partner TEXT, agreement TEXT,
            message_type TEXT, message_id TEXT, correlation_id TEXT,
            envelope_digest TEXT, receipt_digest TEXT, outcome TEXT, code TEXT,
            reason TEXT, actor TEXT, details TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
        "CREATE INDEX audit_entries_message_id ON audit_entries(message_id)",
        "CREATE INDEX audit_entries_correlation_id ON audit_entries(correlation_id)",
        "CREATE INDEX audit_entries_partner_time ON audit_entries(partner, time)",
        "CREATE INDEX audit_entries_time ON audit_entries(time)",
        """CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'audit entries are append-only'; END $$""",
        """CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries
           FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only()""",
        """CREATE TABLE audit_checkpoints (
            id BIGSERIAL PRIMARY KEY, seq BIGINT NOT NULL, head_hash TEXT NOT NULL,
            time TEXT NOT NULL, gateway TEXT NOT NULL, signed_bytes BYTEA NOT NULL,
            signature BYTEA NOT NULL, cert_pem TEXT NOT NULL)""",
        "CREATE INDEX audit_checkpoints_seq ON audit_checkpoints(seq)",
        """CREATE TABLE audit_evidence (
            digest TEXT PRIMARY KEY, kind TEXT NOT NULL, data BYTEA, size BIGINT NOT NULL,
            stored_at TEXT NOT NULL, retention_until TEXT NOT NULL, purged_at TEXT)""",
        "CREATE INDEX audit_evidence_retention ON audit_evidence(retention_until)",
    ],
    [  # 2: a row the health probe writes, to learn whether the store can commit again
        "CREATE TABLE audit_probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
    ],
]


class PostgresStore:
    """asyncpg pool; each batch one transaction under an advisory lock."""

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self._url = url

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> PostgresStore:
        # imported here: a SQLite-only installation need not have asyncpg
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        try:
            # bounded connects and statements: a database that stops answering is a failure
            # to report (readiness, a retry), not a wait without end
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=4, timeout=10, command_timeout=30
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise AuditError(
                f"cannot connect to PostgreSQL for the audit log: {exc}", code="AUDIT_UNAVAILABLE"
            ) from exc
        store = cls(pool, url)
        if not migrate:
            return store
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_KEY)
            await con.execute(
                "CREATE TABLE IF NOT EXISTS audit_schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = await con.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM audit_schema_version"
            )
            if current > len(_PG_MIGRATIONS):
                raise AuditError(
                    f"schema version {current} is newer than this gateway knows",
                    code="AUDIT_SCHEMA_NEWER",
                )
            for version in range(current + 1, len(_PG_MIGRATIONS) + 1):
                for stmt in _PG_MIGRATIONS[version - 1]:
                    await con.execute(stmt)
                await con.execute(
                    "INSERT INTO audit_schema_version VALUES ($1, $2)", version, utc_now()
                )
                log.info("audit_schema_migrated", backend="postgresql", version=version)

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        try:
            async with self._pool.acquire() as con:
                return await fn(con)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AuditError(f"PostgreSQL audit store: {exc}", code="AUDIT_STORE_FAILED") from exc

    async def write_batch(
        self, gateway: str, entries: Sequence[Pending], evidence: Sequence[EvidenceItem]
    ) -> tuple[int, str]:
        async def run(con: Any) -> tuple[int, str]:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_KEY)
                head = await _pg_head(con)
                if entries:
                    rows = chain_rows(*head, utc_now(), gateway, entries)
                    await con.copy_records_to_table(
                        "audit_entries", records=rows, columns=list(ROW_COLUMNS)
                    )
                    head = (rows[-1][0], rows[-1][-1])
                if evidence:
                    await con.executemany(
                        "INSERT INTO audit_evidence "
                        "(digest, kind, data, size, stored_at, retention_until) "
                        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING",
                        [
                            (e.digest, e.kind, e.data, len(e.data), e.stored_at, e.retention_until)
                            for e in evidence
                        ],
                    )
                return head

        result: tuple[int, str] = await self._run(run)
        return result

    async def head(self) -> tuple[int, str]:
        result: tuple[int, str] = await self._run(_pg_head)
        return result

    async def probe(self) -> None:
        async def run(con: Any) -> None:
            await con.execute(
                "INSERT INTO audit_probe (id, at) VALUES (1, $1) "
                "ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                utc_now(),
            )

        await self._run(run)

    async def add_checkpoint(self, cp: Checkpoint) -> None:
        async def run(con: Any) -> None:
            await con.execute(
                "INSERT INTO audit_checkpoints "
                "(seq, head_hash, time, gateway, signed_bytes, signature, cert_pem) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                cp.seq,
                cp.head_hash,
                cp.time,
                cp.gateway,
                cp.signed_bytes,
                cp.signature,
                cp.cert_pem,
            )

        await self._run(run)

    async def checkpoints(self) -> list[Checkpoint]:
        async def run(con: Any) -> list[Checkpoint]:
            rows = await con.fetch(
                "SELECT seq, head_hash, time, gateway, signed_bytes, signature, cert_pem "
                "FROM audit_checkpoints ORDER BY seq, id"
            )
            return [Checkpoint(*r) for r in rows]

        result: list[Checkpoint] = await self._run(run)
        return result

    async def count(self, from_seq: int, to_seq: int) -> int:
        async def run(con: Any) -> int:
            return int(
                await con.fetchval(
                    "SELECT COUNT(*) FROM audit_entries WHERE seq BETWEEN $1 AND $2",
                    from_seq,
                    to_seq,
                )
            )

        result: int = await self._run(run)
        return result

    async def iter_rows(
        self, from_seq: int, to_seq: int, chunk: int
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        try:
            async with self._pool.acquire() as con, con.transaction(readonly=True):
                cur = await con.cursor(
                    f"SELECT {_COLS} FROM audit_entries WHERE seq BETWEEN $1 AND $2 ORDER BY seq",  # noqa: S608
                    from_seq,
                    to_seq,
                )
                while True:
                    rows = await cur.fetch(chunk)
                    if not rows:
                        break
                    yield [tuple(r) for r in rows]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AuditError(f"PostgreSQL audit store: {exc}", code="AUDIT_STORE_FAILED") from exc

    async def _entries(self, sql: str, *args: Any) -> list[Entry]:
        async def run(con: Any) -> list[Entry]:
            return [Entry.from_row(tuple(r)) for r in await con.fetch(sql, *args)]

        result: list[Entry] = await self._run(run)
        return result

    async def search(self, flt: SearchFilter) -> list[Entry]:
        where, args = _where(flt, "$")
        return await self._entries(
            f"SELECT {_COLS} FROM audit_entries {where} ORDER BY seq LIMIT {int(flt.limit)}",  # noqa: S608
            *args,
        )

    async def timeline(self, message_id: str) -> list[Entry]:
        return await self._entries(
            f"SELECT {_COLS} FROM audit_entries WHERE message_id = $1 OR correlation_id = $1 "  # noqa: S608
            "ORDER BY seq",
            message_id,
        )

    async def seq_at_time(self, time: str, *, after: bool) -> int:
        sql = (
            "SELECT COALESCE(MIN(seq), (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_entries)) "
            "FROM audit_entries WHERE time >= $1"
            if after
            else "SELECT COALESCE(MAX(seq), 0) FROM audit_entries WHERE time <= $1"
        )

        async def run(con: Any) -> int:
            return int(await con.fetchval(sql, time))

        result: int = await self._run(run)
        return result

    async def get_evidence(self, digest: str) -> bytes | None:
        async def run(con: Any) -> bytes | None:
            data = await con.fetchval("SELECT data FROM audit_evidence WHERE digest = $1", digest)
            return None if data is None else bytes(data)

        result: bytes | None = await self._run(run)
        return result

    async def evidence_info(self, digests: Sequence[str]) -> list[EvidenceInfo]:
        async def run(con: Any) -> list[EvidenceInfo]:
            rows = await con.fetch(
                "SELECT digest, kind, size, stored_at, retention_until, purged_at "
                "FROM audit_evidence WHERE digest = ANY($1::text[]) ORDER BY stored_at",
                list(digests),
            )
            return [EvidenceInfo(*r) for r in rows]

        result: list[EvidenceInfo] = await self._run(run)
        return result

    async def purge(self, now: str) -> int:
        async def run(con: Any) -> int:
            status = await con.execute(
                "UPDATE audit_evidence SET data = NULL, purged_at = $1 "
                "WHERE retention_until < $2 AND data IS NOT NULL",
                utc_now(),
                now,
            )
            return int(status.split()[-1])

        result: int = await self._run(run)
        return result

    async def close(self) -> None:
        await self._pool.close()


async def _pg_head(con: Any) -> tuple[int, str]:
    row = await con.fetchrow("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1")
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


async def open_store(url: str, *, create: bool = True, migrate: bool = True) -> Store:
    """The store a URL names: ``postgresql://…`` or ``sqlite:///path`` / a plain path.

    ``migrate=False`` is for read-only helpers (verify workers): no schema check, no lock.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url, migrate=migrate)
    return await SqliteStore.open(sqlite_path(url), create=create, migrate=migrate)
