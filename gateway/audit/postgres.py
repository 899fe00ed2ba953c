"""The exchange log in PostgreSQL (asyncpg): several gateway instances share one chain.

Each batch is one transaction under a transaction-scoped advisory lock, so the chain
stays linear across processes and hosts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from gateway.audit.backend import (
    _COLS,
    Checkpoint,
    EvidenceInfo,
    EvidenceItem,
    Pending,
    SearchFilter,
    _where,
    chain_rows,
)
from gateway.audit.chain import GENESIS, ROW_COLUMNS, Entry, utc_now
from gateway.errors import AuditError, ErrorCode
from gateway.pgschema import migrate

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
                f"cannot connect to PostgreSQL for the audit log: {exc}",
                code=ErrorCode.AUDIT_UNAVAILABLE,
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
        async with self._pool.acquire() as con:
            await migrate(
                con,
                name="audit",
                lock_key=_PG_LOCK_KEY,
                migrations=_PG_MIGRATIONS,
                newer=lambda version: AuditError(
                    f"schema version {version} is newer than this gateway knows",
                    code=ErrorCode.AUDIT_SCHEMA_NEWER,
                ),
                applied_at=utc_now(),
            )

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        try:
            async with self._pool.acquire() as con:
                return await fn(con)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise AuditError(
                f"PostgreSQL audit store: {exc}", code=ErrorCode.AUDIT_STORE_FAILED
            ) from exc

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
            raise AuditError(
                f"PostgreSQL audit store: {exc}", code=ErrorCode.AUDIT_STORE_FAILED
            ) from exc

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
