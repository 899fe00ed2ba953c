"""gateway/state/store.py: every state store keeps the same promises, on SQLite and on PostgreSQL.

Each test takes ``engine`` and so runs once per engine; the PostgreSQL run skips when no
server is reachable (fails in CI). Engine-specific faults are in test_sqlite.py and
test_postgres.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StoreError
from gateway.state.postgres import PostgresStateStore
from gateway.state.sqlite import SqliteStateStore
from gateway.state.store import StateStore
from maagw_testing.state import Engine


async def _in_outbox(engine: Engine, message_id: str) -> bool:
    """Whether another connection sees ``message_id`` in the outbox (i.e. it is committed)."""
    return bool(await engine.fetch("SELECT 1 FROM outbox WHERE message_id = ?", message_id))


async def _claim_row(engine: Engine, message_id: str) -> tuple[str, str | None, str | None]:
    """State, owner and boot of XA's claim of ``message_id``, as another connection sees them."""
    [row] = await engine.fetch(
        "SELECT state, owner, boot FROM claims WHERE sender = 'XA' AND message_id = ?", message_id
    )
    return (str(row[0]), row[1], row[2])


async def test_open_state_picks_the_engine_by_url(engine: Engine) -> None:
    """A postgresql:// URL opens the PostgreSQL store, anything else an SQLite file."""
    store = await engine.open()
    try:
        expected = PostgresStateStore if engine.pg else SqliteStateStore
        assert isinstance(store, expected)
    finally:
        await store.close()


async def test_each_call_returns_only_after_its_write_is_committed(engine: Engine) -> None:
    """Many concurrent calls share commits, yet each one's row is visible elsewhere when it returns."""
    store = await engine.open()
    try:

        async def put(i: int) -> bool:
            await store.outbox_put(f"m-{i}", "XB", b"<signed/>", f"sha256:{i:064x}")
            return await _in_outbox(engine, f"m-{i}")

        seen = await asyncio.gather(*(put(i) for i in range(200)))
        assert all(seen)
        assert await store.outbox_get("m-199") == (b"<signed/>", f"sha256:{199:064x}")
        # the first signed bytes stay: a retry sends exactly what was signed
        await store.outbox_put("m-1", "XB", b"<other/>", "sha256:other")
        assert await store.outbox_get("m-1") == (b"<signed/>", f"sha256:{1:064x}")
        assert await store.outbox_get("never") is None
    finally:
        await store.close()


async def test_a_failing_call_is_rolled_back_alone(engine: Engine) -> None:
    """A call that fails in a shared transaction fails alone; the calls beside it commit."""
    store = await engine.open()
    try:
        broken = engine.call(
            "INSERT INTO outbox VALUES ('half', 'XB', 'd', 'x', 0)",
            "INSERT INTO no_such_table VALUES (1)",
        )
        results = await asyncio.gather(
            *(store.outbox_put(f"m-{i}", "XB", b"x", "d") for i in range(20)),
            store._tx(broken),  # type: ignore[attr-defined]
            *(store.outbox_put(f"n-{i}", "XB", b"x", "d") for i in range(20)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1 and isinstance(failures[0], StoreError)
        assert "no_such_table" in str(failures[0])
        # the failing call's first insert was undone with it
        assert not await _in_outbox(engine, "half")
        for p in "mn":
            for i in range(20):
                assert await _in_outbox(engine, f"{p}-{i}")
    finally:
        await store.close()


async def test_a_bad_statement_is_not_a_store_failure(engine: Engine) -> None:
    """A call failing on its own SQL fails alone and leaves the store healthy (not a disk fault)."""
    store = await engine.open()
    try:
        with pytest.raises(StoreError):
            await store._tx(engine.call("INSERT INTO no_such_table VALUES (1)"))  # type: ignore[attr-defined]
        assert store.health.healthy
    finally:
        await store.close()


async def test_a_call_after_close_is_refused(engine: Engine) -> None:
    """A closed store answers with a StoreError, not a hang."""
    store = await engine.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.outbox_get("m")


async def test_a_claim_goes_from_claimed_to_published_and_then_answers_duplicates(
    engine: Engine,
) -> None:
    """First claim wins; a second meanwhile is in flight; once published, every claim is a duplicate with the receipt."""
    store = await engine.open(owner="gw-1", boot="run-1")
    try:
        first = await store.claim("XA", "m-1", "sha256:a", stale_after=60.0)
        assert (first.outcome, first.possible_duplicate) == ("claimed", False)
        assert (await store.claim("XA", "m-1", "sha256:a", stale_after=60.0)).outcome == "in_flight"
        # another sender's id is another claim
        assert (await store.claim("XC", "m-1", "sha256:c", stale_after=60.0)).outcome == "claimed"
        await store.mark_published("XA", "m-1", "r-1")
        again = await store.claim("XA", "m-1", "sha256:a", stale_after=60.0)
        assert (again.outcome, again.digest, again.receipt_id) == ("published", "sha256:a", "r-1")
        assert await _claim_row(engine, "m-1") == ("published", "gw-1", "run-1")
    finally:
        await store.close()


async def test_a_released_claim_is_free_and_an_uncertain_or_stale_one_is_a_possible_duplicate(
    engine: Engine,
) -> None:
    """release frees the id; release(uncertain) and a stale claim are taken over, marked as possible duplicates."""
    store = await engine.open(owner="gw-1", boot="run-1")
    try:
        await store.claim("XA", "free", "sha256:a", stale_after=60.0)
        await store.release("XA", "free")
        assert await engine.fetch("SELECT 1 FROM claims WHERE message_id = 'free'") == []
        fresh = await store.claim("XA", "free", "sha256:a", stale_after=60.0)
        assert (fresh.outcome, fresh.possible_duplicate) == ("claimed", False)

        await store.claim("XA", "unsure", "sha256:b", stale_after=60.0)
        await store.release("XA", "unsure", uncertain=True)
        assert (await _claim_row(engine, "unsure"))[0] == "uncertain"
        taken = await store.claim("XA", "unsure", "sha256:b", stale_after=60.0)
        assert (taken.outcome, taken.possible_duplicate) == ("claimed", True)

        await store.claim("XA", "stale", "sha256:c", stale_after=60.0)
        assert (await store.claim("XA", "stale", "sha256:c", stale_after=3600.0)).outcome == (
            "in_flight"
        )
        await asyncio.sleep(0.05)
        stale = await store.claim("XA", "stale", "sha256:c", stale_after=0.01)
        assert (stale.outcome, stale.possible_duplicate) == ("claimed", True)

        # a published claim is never released
        await store.mark_published("XA", "free", "r-1")
        await store.release("XA", "free", uncertain=True)
        await store.release("XA", "free")
        assert (await _claim_row(engine, "free"))[0] == "published"
    finally:
        await store.close()


async def test_expired_published_claims_are_forgotten(engine: Engine) -> None:
    """expire_claims drops published claims older than the retention, never open ones."""
    store = await engine.open()
    try:
        await store.claim("XA", "done", "sha256:a", stale_after=60.0)
        await store.mark_published("XA", "done", "r-1")
        await store.claim("XA", "open", "sha256:b", stale_after=60.0)
        assert await store.expire_claims(older_than=0.0) == 0
        assert await store.expire_claims(older_than=1e12) == 1
        assert [r[0] for r in await engine.fetch("SELECT message_id FROM claims")] == ["open"]
    finally:
        await store.close()


async def test_known_requests_are_remembered_per_agreement_and_requester(engine: Engine) -> None:
    """A remembered request is known under its agreement and requester only; remembering twice is harmless."""
    store = await engine.open()
    try:
        await store.remember_request("A-1", "XA", "req-1")
        await store.remember_request("A-1", "XA", "req-1")
        assert await store.knows_request("A-1", "XA", "req-1")
        assert not await store.knows_request("A-2", "XA", "req-1")
        assert not await store.knows_request("A-1", "XB", "req-1")
    finally:
        await store.close()


@pytest.mark.parametrize("chunk", [1, 5000])
async def test_housekeeping_forgets_only_what_the_replay_window_no_longer_needs(
    engine: Engine, chunk: int
) -> None:
    """Claims past the window go whatever their state, recent ones stay; the outbox keeps twice the window."""
    store = await engine.open()
    day = 24 * 3600.0
    now = 100 * day
    try:
        await engine.executemany(
            "INSERT INTO claims (sender, message_id, digest, state, receipt_id, claimed) "
            "VALUES (?, ?, 'd', ?, NULL, ?)",
            [
                ("XA", "old-published", "published", now - 8 * day),
                ("XA", "old-uncertain", "uncertain", now - 8 * day),
                ("XA", "recent-published", "published", now - 6 * day),
                ("XA", "recent-claimed", "claimed", now - 1),
            ],
        )
        await engine.executemany(
            "INSERT INTO outbox VALUES (?, 'XB', 'd', ?, ?)",
            [
                ("sent-15-days-ago", b"\x00", now - 15 * day),
                ("sent-16-days-ago", b"\x00", now - 16 * day),
                ("sent-13-days-ago", b"\x00", now - 13 * day),
            ],
        )
        await engine.executemany(
            "INSERT INTO requests VALUES ('A', 'XA', ?, 0)", [("asked-long-ago",)]
        )
        assert await store.housekeep(now, 7 * day, chunk=chunk) == {"claims": 2, "outbox": 2}
        queries = (
            "SELECT message_id FROM claims ORDER BY message_id",
            "SELECT message_id FROM outbox ORDER BY message_id",
            "SELECT message_id FROM requests ORDER BY message_id",
        )
        assert [[r[0] for r in await engine.fetch(q)] for q in queries] == [
            ["recent-claimed", "recent-published"],
            ["sent-13-days-ago"],
            ["asked-long-ago"],
        ]
    finally:
        await store.close()


async def test_a_dead_letter_is_kept_listed_newest_first_and_read_back_whole(
    engine: Engine,
) -> None:
    """dead_put keeps the copy; dead_list lists newest first; dead_get returns bytes and properties as put."""
    store = await engine.open()
    try:
        ids = [
            await store.dead_put(
                message_id=f"m-{i}",
                partner="XB",
                direction="outbound",
                code="RELAY_NO_FORMAT",
                reason="no format",
                properties={"type": "maa.request", "n": i},
                body=b"\x00{}" + bytes([i]),
            )
            for i in range(3)
        ]
        assert [d.id for d in await store.dead_list()] == ids[::-1]
        assert [d.id for d in await store.dead_list(limit=1)] == ids[2:]
        item = await store.dead_get(ids[1])
        assert item is not None
        assert (item.message_id, item.partner, item.direction, item.code) == (
            "m-1",
            "XB",
            "outbound",
            "RELAY_NO_FORMAT",
        )
        assert item.properties == {"type": "maa.request", "n": 1}
        assert item.body == b"\x00{}\x01" and item.replayed_at is None
        await store.dead_mark_replayed(ids[1])
        replayed = await store.dead_get(ids[1])
        assert replayed is not None and replayed.replayed_at is not None
        assert await store.dead_get(999_999) is None
    finally:
        await store.close()


async def test_of_two_replays_of_one_dead_letter_at_once_only_one_is_recorded(
    engine: Engine,
) -> None:
    """Two simultaneous first replays of a dead letter: exactly one is recorded; ``again`` always is, and an undo restores the time."""
    store = await engine.open()
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


async def test_a_restarted_owner_takes_over_its_dead_runs_claims_at_once(engine: Engine) -> None:
    """Claims left 'claimed' by an earlier run of the same owner become 'uncertain'; others stay."""
    dead: StateStore = await engine.open(owner="gw-1", boot="run-1")
    other = await engine.open(owner="gw-2", boot="run-9")
    try:
        await dead.claim("XA", "crashed", "sha256:a", stale_after=60.0)
        await dead.claim("XA", "done", "sha256:b", stale_after=60.0)
        await dead.mark_published("XA", "done", "r-1")
        await other.claim("XA", "alive", "sha256:c", stale_after=60.0)
        assert await _claim_row(engine, "crashed") == ("claimed", "gw-1", "run-1")
    finally:
        await dead.close()
    restarted = await engine.open(owner="gw-1", boot="run-2")
    try:
        assert await restarted.take_over_claims() == 1
        assert (await _claim_row(engine, "crashed"))[0] == "uncertain"
        assert (await _claim_row(engine, "done"))[0] == "published"
        assert (await _claim_row(engine, "alive"))[0] == "claimed"  # another instance's
        # the sender's next attempt is claimed at once and marked as a possible duplicate
        again = await restarted.claim("XA", "crashed", "sha256:a", stale_after=60.0)
        assert (again.outcome, again.possible_duplicate) == ("claimed", True)
        assert await _claim_row(engine, "crashed") == ("claimed", "gw-1", "run-2")
        # its own current claims are never taken over
        assert await restarted.take_over_claims() == 0
    finally:
        await restarted.close()
        await other.close()
