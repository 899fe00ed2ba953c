"""The exchange log in one SQLite file: WAL, ``synchronous=FULL``, one writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.audit.backend import (
    _COLS,
    Checkpoint,
    EvidenceInfo,
    EvidenceItem,
    Pending,
    SearchFilter,
    T,
    _where,
    chain_rows,
    log,
)
from gateway.audit.chain import GENESIS, ROW_COLUMNS, Entry, utc_now
from gateway.errors import AuditError, ErrorCode

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
            raise AuditError(
                f"{path}: audit database does not exist", code=ErrorCode.AUDIT_NOT_FOUND
            )
        try:
            await store._in(store._writer, store._open_writer)
            await store._in(store._reader, store._open_reader)
        except sqlite3.Error as exc:
            await store.close()
            raise AuditError(f"{path}: {exc}", code=ErrorCode.AUDIT_UNAVAILABLE) from exc
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
                    code=ErrorCode.AUDIT_SCHEMA_NEWER,
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
            raise AuditError(f"{self.path}: {exc}", code=ErrorCode.AUDIT_STORE_FAILED) from exc

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
