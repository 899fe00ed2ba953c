"""Test doubles for the audit log: a throwaway checkpoint signer, a PostgreSQL scratch database,
raw SQL access (the attacker's view) and a filled test log.

Used by the audit tests and the benchmark; never by the running gateway.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.audit.chain import AuditEvent
from gateway.audit.log import AuditLog
from gateway.audit.verify import VerifyReport

T = TypeVar("T")


#: the server a scratch database is created on (its admin database)
PG_ADMIN_URL = os.environ.get("MAAGW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


PG_HOW_TO_START = (
    "PostgreSQL is not reachable at {url} ({error}); start one with "
    "`docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16` "
    "or point MAAGW_TEST_PG_URL at a server where you may create databases"
)


@dataclass(frozen=True)
class EcSigner:
    """An ECDSA P-256 key and its self-signed certificate: a ``CheckpointSigner``."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls, common_name: str = "XA audit test signer") -> EcSigner:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def sign_detached_bytes(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


class PgUnavailable(Exception):
    """No PostgreSQL to test against; the message says how to start one."""


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a loop of its own (fixtures may start inside a running loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def start_scratch_pg(admin_url: str = PG_ADMIN_URL) -> str:
    """Create a scratch database and return its URL; ``PgUnavailable`` when there is no server.

    Test sessions call this once, then ``stop_scratch_pg``; a session fixture turns
    ``PgUnavailable`` into a skip, or a failure when ``services_required()``.
    """
    problem = _sync(pg_reachable(admin_url))
    if problem is not None:
        raise PgUnavailable(PG_HOW_TO_START.format(url=admin_url, error=problem))
    return _sync(create_scratch_db(admin_url))


def stop_scratch_pg(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop a database ``start_scratch_pg`` created."""
    _sync(drop_scratch_db(url, admin_url))


async def pg_reachable(url: str = PG_ADMIN_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else the reason it does not."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    try:
        con = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await con.close()
    return None


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + db))


async def create_scratch_db(admin_url: str = PG_ADMIN_URL) -> str:
    """Create an empty database; returns its URL."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    name = f"maagw_audit_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    return _with_db(admin_url, name)


async def drop_scratch_db(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop a database ``create_scratch_db`` made (closing other sessions on it)."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    name = urlsplit(url).path.lstrip("/")
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


async def reset_audit_tables(url: str) -> None:
    """Remove the audit schema so the next open starts from an empty log."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    con = await asyncpg.connect(url)
    try:
        await con.execute(
            "DROP TABLE IF EXISTS audit_entries, audit_checkpoints, audit_evidence, audit_probe, "
            "audit_schema_version CASCADE; "
            "DROP FUNCTION IF EXISTS audit_entries_append_only() CASCADE"
        )
    finally:
        await con.close()


class Raw:
    """Direct SQL on the store, as an attacker with database access would use it.

    Takes ``?`` placeholders on both backends (turned into ``$n`` for PostgreSQL).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith("postgresql://")

    async def _pg(self) -> Any:
        import asyncpg  # type: ignore[import-untyped, unused-ignore]

        return await asyncpg.connect(self.url)

    @staticmethod
    def _dollar(sql: str) -> str:
        n = 0
        out = []
        for ch in sql:
            if ch == "?":
                n += 1
                out.append(f"${n}")
            else:
                out.append(ch)
        return "".join(out)

    async def execute(self, sql: str, *args: Any) -> None:
        if self.pg:
            con = await self._pg()
            try:
                await con.execute(self._dollar(sql), *args)
            finally:
                await con.close()
        else:
            conn = sqlite3.connect(self.url.removeprefix("sqlite://"), isolation_level=None)
            try:
                conn.execute(sql, args)
            finally:
                conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.pg:
            con = await self._pg()
            try:
                return [tuple(r) for r in await con.fetch(self._dollar(sql), *args)]
            finally:
                await con.close()
        conn = sqlite3.connect(self.url.removeprefix("sqlite://"))
        try:
            return [tuple(r) for r in conn.execute(sql, args)]
        finally:
            conn.close()

    async def unlock(self) -> None:
        """Remove the append-only triggers (the first thing an attacker does)."""
        if self.pg:
            await self.execute("DROP TRIGGER audit_entries_append_only ON audit_entries")
        else:
            await self.execute("DROP TRIGGER audit_entries_no_update")
            await self.execute("DROP TRIGGER audit_entries_no_delete")


def ev(i: int, **kw: Any) -> AuditEvent:
    """The ``i``-th event of a test log (message id ``msg-i``), with any field overridden."""
    fields: dict[str, Any] = {
        "event": "received",
        "direction": "inbound",
        "partner": "XB",
        "agreement": "XA-XB-MAA",
        "message_type": "maa-request",
        "message_id": f"msg-{i}",
        "outcome": "ok",
        "details": {"n": i},
    }
    fields.update(kw)
    return AuditEvent(**fields)


async def filled(
    url: str, checkpoint_signer: EcSigner | None, n: int = 35, *, chunk: int = 10, every: int = 10
) -> None:
    """A log of ``n`` entries appended ``chunk`` at a time (a checkpoint per ``every``)."""
    log = await AuditLog.open(
        url, gateway_id="XA", checkpoint_signer=checkpoint_signer, checkpoint_every=every
    )
    for start in range(1, n + 1, chunk):
        await log.append_many([ev(i) for i in range(start, min(n, start + chunk - 1) + 1)])
    await log.close()


async def verify_log(url: str, **kw: Any) -> VerifyReport:
    """Open an existing log at ``url``, verify it with ``kw`` and close it."""
    log = await AuditLog.open(url, gateway_id="XA", create=False)
    try:
        return await log.verify(**kw)
    finally:
        await log.close()
