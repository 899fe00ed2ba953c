"""gateway/state/postgres.py: what only PostgreSQL meets — several instances, a lost server, migrations.

The behaviour both engines share is tested once for each in test_store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from gateway.errors import StoreError
from gateway.state.postgres import PostgresStateStore
from maagw_testing.audit import PG_ADMIN_URL
from maagw_testing.state import Engine

pytestmark = pytest.mark.postgres


async def _open(engine: Engine, owner: str = "-", boot: str = "-") -> PostgresStateStore:
    store = await engine.open(owner=owner, boot=boot)
    assert isinstance(store, PostgresStateStore)
    return store


async def test_two_instances_racing_for_one_claim_get_it_once(pg_engine: Engine) -> None:
    """Two instances claiming the same ids at the same moment: each id is claimed exactly once."""
    one = await _open(pg_engine, owner="gw-1", boot="a")
    two = await _open(pg_engine, owner="gw-2", boot="b")
    try:
        ids = [f"m-{i}" for i in range(100)]
        results = await asyncio.gather(
            *(
                store.claim("XA", message_id, "sha256:d", stale_after=60.0)
                for message_id in ids
                for store in (one, two)
            )
        )
        for i in range(len(ids)):
            pair = sorted(c.outcome for c in results[2 * i : 2 * i + 2])
            assert pair == ["claimed", "in_flight"], ids[i]
        owners = await pg_engine.fetch("SELECT owner, COUNT(*) FROM claims GROUP BY owner")
        assert sum(n for _, n in owners) == len(ids)
    finally:
        await one.close()
        await two.close()


async def test_a_claim_of_an_instance_whose_lease_ran_out_is_taken_over_in_seconds(
    pg_engine: Engine,
) -> None:
    """While its instance lives, a claim in flight is the instance's; once the instance stops
    renewing its lease (it died), another takes the claim over, marked as a possible duplicate."""
    dead = await _open(pg_engine, owner="gw-1", boot="a")
    live = await _open(pg_engine, owner="gw-2", boot="b")
    live.lease_seconds = 1.0
    try:
        assert (await dead.claim("XA", "m-1", "sha256:d", stale_after=60.0)).outcome == "claimed"
        assert (await live.claim("XA", "m-1", "sha256:d", stale_after=60.0)).outcome == "in_flight"
        # gw-1 dies: its lease is no longer renewed (its process is gone)
        assert dead._renewer is not None
        dead._renewer.cancel()
        await asyncio.sleep(1.5)
        taken = await live.claim("XA", "m-1", "sha256:d", stale_after=60.0)
        assert (taken.outcome, taken.possible_duplicate) == ("claimed", True)
        owner = await pg_engine.fetch("SELECT owner, boot FROM claims WHERE message_id = 'm-1'")
        assert owner == [("gw-2", "b")]
    finally:
        await dead.close()
        await live.close()


async def test_a_live_instance_keeps_its_claim_past_the_lease(pg_engine: Engine) -> None:
    """An instance that renews its lease keeps its claim however long the publish takes."""
    slow = await _open(pg_engine, owner="gw-1", boot="a")
    other = await _open(pg_engine, owner="gw-2", boot="b")
    other.lease_seconds = 1.0
    try:
        await slow.claim("XA", "m-1", "sha256:d", stale_after=60.0)
        await slow.renew_lease()
        await asyncio.sleep(1.2)
        await slow.renew_lease()  # what its renewer does every two seconds
        assert (await other.claim("XA", "m-1", "sha256:d", stale_after=60.0)).outcome == "in_flight"
    finally:
        await slow.close()
        await other.close()


async def test_a_published_claim_is_a_duplicate_at_the_other_instance(pg_engine: Engine) -> None:
    """Published by one instance, the same id at another is a duplicate with the original receipt."""
    one = await _open(pg_engine, owner="gw-1", boot="a")
    two = await _open(pg_engine, owner="gw-2", boot="b")
    try:
        await one.claim("XA", "m-1", "sha256:d", stale_after=60.0)
        await one.mark_published("XA", "m-1", "r-1")
        dup = await two.claim("XA", "m-1", "sha256:d", stale_after=60.0)
        assert (dup.outcome, dup.receipt_id) == ("published", "r-1")
        # a restart of gw-2 takes over nothing of gw-1's
        assert await two.take_over_claims() == 0
    finally:
        await one.close()
        await two.close()


async def test_calls_that_arrive_together_share_one_transaction(pg_engine: Engine) -> None:
    """Concurrent calls are group-committed: far fewer transactions than calls."""
    store = await _open(pg_engine)
    try:

        async def txid(con: object) -> int:
            return int(await con.fetchval("SELECT txid_current()"))  # type: ignore[attr-defined]

        ids = await asyncio.gather(*(store._tx(txid) for _ in range(100)))
        assert len(set(ids)) < 10, len(set(ids))
    finally:
        await store.close()


async def test_a_failed_commit_fails_its_batch_and_leaves_the_store_usable(
    pg_engine: Engine,
) -> None:
    """When COMMIT itself fails (a deferred constraint), every caller of that batch gets an error and the next call works."""
    store = await _open(pg_engine)
    try:
        await store._tx(
            pg_engine.call(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE child (parent INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)",
            )
        )
        results = await asyncio.gather(
            store._tx(pg_engine.call("INSERT INTO child VALUES (42)")),
            store._tx(pg_engine.call("INSERT INTO child VALUES (43)")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in results), results
        assert store.health.healthy  # a constraint, not the database failing
        await store.outbox_put("after", "XB", b"x", "d")
        assert await store.outbox_get("after") == (b"x", "d")
    finally:
        await store._tx(pg_engine.call("DROP TABLE child", "DROP TABLE parent"))
        await store.close()


@asynccontextmanager
async def _database_down(url: str) -> AsyncIterator[None]:
    """The database refuses new connections and every open one is cut, until the block ends."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_a_lost_database_fails_calls_turns_unready_and_recovers_by_itself(
    pg_engine: Engine,
) -> None:
    """Connections cut and refused: calls raise StoreError, one error line, not healthy; back by itself when the server is."""
    store = await _open(pg_engine)
    store.health._every, store.health._quiet = 0.05, 0.5
    try:
        await store.outbox_put("before", "XB", b"x", "d")
        with capture_logs() as logs:
            async with _database_down(pg_engine.url):
                for i in range(3):
                    with pytest.raises(StoreError):
                        await store.outbox_put(f"m-{i}", "XB", b"x", "d")
                assert not store.health.healthy
                assert not await store.health.wait(0.3)
            # no traffic needed: the probe finds the database again
            assert await store.health.wait(10.0)
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [(e["event"], e["store"]) for e in errors] == [("store_failed", "state")]
        await store.outbox_put("after", "XB", b"x", "d")
        assert await store.outbox_get("before") == (b"x", "d")
    finally:
        await store.close()


async def test_a_call_cut_off_mid_statement_fails_and_the_next_one_works(
    pg_engine: Engine,
) -> None:
    """A connection terminated under a running call fails that call with StoreError; the pool reconnects for the next."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    store = await _open(pg_engine)
    try:
        slow = store._tx(pg_engine.call("SELECT pg_sleep(5)"))
        task = asyncio.ensure_future(slow)
        await asyncio.sleep(0.5)
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'SELECT pg_sleep(5)%' AND datname = $1",
                urlsplit(pg_engine.url).path.lstrip("/"),
            )
        finally:
            await admin.close()
        with pytest.raises(StoreError):
            await task
        assert not store.health.healthy
        await store.outbox_put("after", "XB", b"x", "d")
        assert store.health.healthy
    finally:
        await store.close()


async def test_migrations_run_once_however_often_the_store_is_opened(pg_engine: Engine) -> None:
    """Opening twice, and twice at once, keeps one schema version row and the data."""
    first = await _open(pg_engine)
    await first.outbox_put("kept", "XB", b"x", "d")
    await first.close()
    again = await asyncio.gather(_open(pg_engine), _open(pg_engine))
    try:
        assert await again[0].outbox_get("kept") == (b"x", "d")
    finally:
        for store in again:
            await store.close()
    assert await pg_engine.fetch("SELECT version FROM state_schema_version") == [(1,), (2,)]


async def test_a_schema_from_a_newer_gateway_is_refused(pg_engine: Engine) -> None:
    """A database migrated past what this gateway knows is refused at open, not written to."""
    await (await _open(pg_engine)).close()
    await pg_engine.executemany("INSERT INTO state_schema_version VALUES (?, 'later')", [(99,)])
    with pytest.raises(StoreError, match="newer"):
        await _open(pg_engine)


async def test_an_unreachable_server_is_a_store_error_at_open() -> None:
    """No server at the URL: open raises StoreError (STORE_UNAVAILABLE), not an asyncpg error."""
    with pytest.raises(StoreError) as info:
        await PostgresStateStore.open("postgresql://nobody@127.0.0.1:1/none")
    assert info.value.code == "STORE_UNAVAILABLE"
