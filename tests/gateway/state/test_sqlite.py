"""gateway/state/sqlite.py: what only the SQLite engine meets — a failed COMMIT, an old file, a full disk.

The behaviour both engines share is tested once for each in test_store.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.state.sqlite import SqliteStateStore


async def test_a_failed_commit_fails_its_batch_and_leaves_the_store_usable(tmp_path: Path) -> None:
    """When COMMIT itself fails, every caller of that batch gets an error and the next call works."""
    store = await SqliteStateStore.open(tmp_path / "state.db")
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


async def _claim_row(path: Path, message_id: str) -> tuple[str, str | None, str | None]:
    """State, owner and boot of a claim, read from the file directly."""

    def read() -> tuple[str, str | None, str | None]:
        with sqlite3.connect(path) as db:
            row = db.execute(
                "SELECT state, owner, boot FROM claims WHERE message_id = ?", (message_id,)
            ).fetchone()
        return (str(row[0]), row[1], row[2])

    return await asyncio.to_thread(read)


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
    store = await SqliteStateStore.open(path, owner="gw-1", boot="run-1")
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

    store = await SqliteStateStore.open(tmp_path / "state.db")
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
