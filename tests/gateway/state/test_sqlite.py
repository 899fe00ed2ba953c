"""gateway/state/sqlite.py: the state store's group commit, durable per call, failures isolated, usable after a failed commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.state.sqlite import StateStore


def _committed(path: Path, message_id: str) -> bool:
    """Whether another connection sees ``message_id`` in the outbox (i.e. it is committed)."""
    with sqlite3.connect(path) as other:
        return (
            other.execute("SELECT 1 FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
            is not None
        )


async def test_each_call_returns_only_after_its_write_is_committed(tmp_path: Path) -> None:
    """Many concurrent calls share commits, yet each one's row is visible elsewhere when it returns."""
    path = tmp_path / "state.db"
    store = await StateStore.open(path)
    try:

        async def put(i: int) -> bool:
            await store.outbox_put(f"m-{i}", "XB", b"<signed/>", f"sha256:{i:064x}")
            return await asyncio.to_thread(_committed, path, f"m-{i}")

        seen = await asyncio.gather(*(put(i) for i in range(200)))
        assert all(seen)
        assert await store.outbox_get("m-199") == (b"<signed/>", f"sha256:{199:064x}")
    finally:
        await store.close()


async def test_a_failing_call_is_rolled_back_alone(tmp_path: Path) -> None:
    """A call that fails in a shared transaction fails alone; the calls beside it commit."""
    path = tmp_path / "state.db"
    store = await StateStore.open(path)
    try:

        def broken(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO outbox VALUES ('half', 'XB', 'd', x'00', 0)")
            db.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            *(store.outbox_put(f"m-{i}", "XB", b"x", "d") for i in range(20)),
            store._tx(broken),
            *(store.outbox_put(f"n-{i}", "XB", b"x", "d") for i in range(20)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], StoreError)
        assert "no_such_table" in str(failures[0])
        # the failing call's first insert was undone with it
        assert not _committed(path, "half")
        assert all(_committed(path, f"{p}-{i}") for p in "mn" for i in range(20))
    finally:
        await store.close()


async def test_a_failed_commit_fails_its_batch_and_leaves_the_store_usable(tmp_path: Path) -> None:
    """When COMMIT itself fails, every caller of that batch gets an error and the next call works."""
    store = await StateStore.open(tmp_path / "state.db")
    try:

        def prepare(db: sqlite3.Connection) -> None:
            db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            db.execute(
                "CREATE TABLE child (parent INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )

        await store._tx(prepare)
        assert store._db is not None
        db = store._db
        await store._run(lambda: db.execute("PRAGMA foreign_keys = ON"))
        # the deferred foreign key is checked only at COMMIT
        results = await asyncio.gather(
            store._tx(lambda db: db.execute("INSERT INTO child VALUES (42)")),
            store._tx(lambda db: db.execute("INSERT INTO child VALUES (43)")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) for r in results), results
        await store.outbox_put("after", "XB", b"x", "d")
        assert await store.outbox_get("after") == (b"x", "d")
    finally:
        await store.close()


async def test_a_call_after_close_is_refused(tmp_path: Path) -> None:
    """A closed store answers with a StoreError, not a hang."""
    store = await StateStore.open(tmp_path / "state.db")
    await store.close()
    with pytest.raises(StoreError):
        await store.outbox_get("m")


@pytest.mark.parametrize("chunk", [1, 5000])
async def test_housekeeping_forgets_only_what_the_replay_window_no_longer_needs(
    tmp_path: Path, chunk: int
) -> None:
    """Claims past the window go whatever their state, recent ones stay; the outbox keeps twice the window."""
    store = await StateStore.open(tmp_path / "state.db")
    day = 24 * 3600.0
    now = 100 * day
    try:

        def seed(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO claims (sender, message_id, digest, state, receipt_id, claimed) "
                "VALUES (?, ?, 'd', ?, NULL, ?)",
                [
                    ("XA", "old-published", "published", now - 8 * day),
                    ("XA", "old-uncertain", "uncertain", now - 8 * day),
                    ("XA", "recent-published", "published", now - 6 * day),
                    ("XA", "recent-claimed", "claimed", now - 1),
                ],
            )
            db.executemany(
                "INSERT INTO outbox VALUES (?, 'XB', 'd', x'00', ?)",
                [
                    ("sent-15-days-ago", now - 15 * day),
                    ("sent-16-days-ago", now - 16 * day),
                    ("sent-13-days-ago", now - 13 * day),
                ],
            )
            db.execute("INSERT INTO requests VALUES ('A', 'XA', 'asked-long-ago', 0)")

        await store._tx(seed)
        assert await store.housekeep(now, 7 * day, chunk=chunk) == {"claims": 2, "outbox": 2}

        def left(db: sqlite3.Connection) -> list[list[str]]:
            queries = (
                "SELECT message_id FROM claims ORDER BY message_id",
                "SELECT message_id FROM outbox ORDER BY message_id",
                "SELECT message_id FROM requests ORDER BY message_id",
            )
            return [[r[0] for r in db.execute(q)] for q in queries]

        assert await store._tx(left) == [
            ["recent-claimed", "recent-published"],
            ["sent-13-days-ago"],
            ["asked-long-ago"],
        ]
    finally:
        await store.close()


async def test_of_two_replays_of_one_dead_letter_at_once_only_one_is_recorded(
    tmp_path: Path,
) -> None:
    """Two simultaneous first replays of a dead letter: exactly one is recorded; ``again`` always is, and an undo restores the time."""
    store = await StateStore.open(tmp_path / "state.db")
    try:
        dead_id = await store.dead_put(
            message_id="m-1",
            partner="XB",
            direction="outbound",
            code="RELAY_NO_FORMAT",
            reason="no format",
            properties={},
            body=b"{}",
        )
        first, second = await asyncio.gather(
            store.dead_claim_replay(dead_id), store.dead_claim_replay(dead_id)
        )
        again = await store.dead_claim_replay(dead_id, again=True)
        await store.dead_unclaim_replay(dead_id, None)
        item = await store.dead_get(dead_id)
    finally:
        await store.close()
    assert sorted([first, second]) == [False, True]
    assert again is True
    assert item is not None and item.replayed_at is None


async def _claim_row(path: Path, message_id: str) -> tuple[str, str | None, str | None]:
    def read() -> tuple[str, str | None, str | None]:
        with sqlite3.connect(path) as db:
            row = db.execute(
                "SELECT state, owner, boot FROM claims WHERE message_id = ?", (message_id,)
            ).fetchone()
        return (str(row[0]), row[1], row[2])

    return await asyncio.to_thread(read)


async def test_a_restarted_owner_takes_over_its_dead_runs_claims_at_once(tmp_path: Path) -> None:
    """Claims left 'claimed' by an earlier run of the same owner become 'uncertain'; others stay."""
    path = tmp_path / "state.db"
    dead = await StateStore.open(path, owner="gw-1", boot="run-1")
    other = await StateStore.open(path, owner="gw-2", boot="run-9")
    try:
        await dead.claim("XA", "crashed", "sha256:a", stale_after=60.0)
        await dead.claim("XA", "done", "sha256:b", stale_after=60.0)
        await dead.mark_published("XA", "done", "r-1")
        await other.claim("XA", "alive", "sha256:c", stale_after=60.0)
        assert await _claim_row(path, "crashed") == ("claimed", "gw-1", "run-1")
    finally:
        await dead.close()
    restarted = await StateStore.open(path, owner="gw-1", boot="run-2")
    try:
        assert await restarted.take_over_claims() == 1
        assert (await _claim_row(path, "crashed"))[0] == "uncertain"
        assert (await _claim_row(path, "done"))[0] == "published"
        assert (await _claim_row(path, "alive"))[0] == "claimed"  # another instance's
        # the sender's next attempt is claimed at once and marked as a possible duplicate
        again = await restarted.claim("XA", "crashed", "sha256:a", stale_after=60.0)
        assert (again.outcome, again.possible_duplicate) == ("claimed", True)
        assert await _claim_row(path, "crashed") == ("claimed", "gw-1", "run-2")
        # its own current claims are never taken over
        assert await restarted.take_over_claims() == 0
    finally:
        await restarted.close()
        await other.close()


async def test_a_store_from_before_owners_gains_the_columns_and_its_claims_are_taken_over(
    tmp_path: Path,
) -> None:
    """An old state.db (claims without owner) opens, and its 'claimed' rows are taken over."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE claims (sender TEXT NOT NULL, message_id TEXT NOT NULL, "
            "digest TEXT NOT NULL, state TEXT NOT NULL, receipt_id TEXT, claimed REAL NOT NULL, "
            "PRIMARY KEY (sender, message_id))"
        )
        db.execute("INSERT INTO claims VALUES ('XA', 'old', 'sha256:a', 'claimed', NULL, 1.0)")
    store = await StateStore.open(path, owner="gw-1", boot="run-1")
    try:
        assert await store.take_over_claims() == 1
        assert await _claim_row(path, "old") == ("uncertain", None, None)
    finally:
        await store.close()


class _FullDisk:
    """Wraps the store's connection: while ``full``, every write fails as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.full = False

    def execute(self, sql: str, *args: object) -> object:
        if self.full and not sql.lstrip().upper().startswith(("SELECT", "ROLLBACK", "RELEASE")):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise error
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


async def test_a_full_disk_is_one_episode_and_the_probe_notices_the_recovery(
    tmp_path: Path,
) -> None:
    """Writes failing on a full disk log one error, make the store unhealthy, and a probe ends it."""
    from structlog.testing import capture_logs

    store = await StateStore.open(tmp_path / "state.db")
    disk = _FullDisk(store._db)  # type: ignore[arg-type]
    store._db = disk  # type: ignore[assignment]
    store.health._every, store.health._quiet = 0.05, 0.5
    try:
        with capture_logs() as logs:
            disk.full = True
            for i in range(5):
                with pytest.raises(StoreError):
                    await store.outbox_put(f"m-{i}", "XB", b"x", "d")
            assert not store.health.healthy
            assert not await store.health.wait(0.2)
            disk.full = False
            assert await store.health.wait(5.0)  # no traffic needed: the probe found it
            # a flap inside the quiet period is the same episode: no second error line
            disk.full = True
            with pytest.raises(StoreError):
                await store.outbox_put("flap", "XB", b"x", "d")
            disk.full = False
            assert await store.health.wait(5.0)
            for _ in range(100):
                if store.health._prober is None:
                    break
                await asyncio.sleep(0.05)
        assert store.health.healthy
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [(e["event"], e["store"]) for e in errors] == [("store_failed", "state")]
        assert [e["event"] for e in logs if e["event"] == "store_recovered"] == ["store_recovered"]
        await store.outbox_put("after", "XB", b"x", "d")
    finally:
        await store.close()


async def test_a_bad_statement_is_not_a_store_failure(tmp_path: Path) -> None:
    """A call failing on its own SQL fails alone and leaves the store healthy (not a disk fault)."""
    store = await StateStore.open(tmp_path / "state.db")
    try:
        with pytest.raises(StoreError):
            await store._tx(lambda db: db.execute("INSERT INTO no_such_table VALUES (1)"))
        assert store.health.healthy
    finally:
        await store.close()
