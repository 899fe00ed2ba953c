"""One leader per administration (gateway/service/leader.py) on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.service.leader import Leadership, lock_key

FAST = 0.1


async def wait_for(condition: object, timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_the_key_is_per_administration_and_stable() -> None:
    assert lock_key("XB") == lock_key("XB") != lock_key("XA")
    assert -(2**63) <= lock_key("XB") < 2**63


async def test_without_a_shared_database_the_only_process_leads() -> None:
    changes: list[bool] = []
    alone = Leadership(None, "XB", on_change=changes.append)
    alone.start()
    assert alone.leads
    await alone.stop()
    assert alone.leads and changes == []


@pytest.mark.postgres
async def test_one_of_two_instances_leads_and_the_other_takes_over_when_it_dies(
    pg_url: str,
) -> None:
    """The second instance leads within a second of the first one's session ending."""
    first = Leadership(pg_url, "XB-leader-test", instance="a", try_seconds=FAST)
    second = Leadership(pg_url, "XB-leader-test", instance="b", try_seconds=FAST)
    first.start()
    await wait_for(lambda: first.leads)
    second.start()
    await asyncio.sleep(5 * FAST)
    assert first.leads and not second.leads
    # the leader's process dies: its database session ends (as a kill -9 ends it)
    admin = await asyncpg.connect(pg_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = $1 AND objid::bigint = $2",
            (lock_key("XB-leader-test") >> 32) & 0xFFFFFFFF,
            lock_key("XB-leader-test") & 0xFFFFFFFF,
        )
    finally:
        await admin.close()
    assert killed == 1
    took = await wait_for(lambda: second.leads)
    assert took < 5.0  # a try every 0.1 s; a loaded machine may take longer
    await wait_for(lambda: not first.leads)
    await second.stop()
    await first.stop()


@pytest.mark.postgres
async def test_a_stopped_leader_hands_over_and_reports_the_change(pg_url: str) -> None:
    seen: list[tuple[str, bool]] = []
    first = Leadership(
        pg_url, "XB-handover", try_seconds=FAST, on_change=lambda v: seen.append(("a", v))
    )
    second = Leadership(
        pg_url, "XB-handover", try_seconds=FAST, on_change=lambda v: seen.append(("b", v))
    )
    first.start()
    await wait_for(lambda: first.leads)
    second.start()
    await first.stop()
    await wait_for(lambda: second.leads)
    await second.stop()
    assert seen == [("a", True), ("a", False), ("b", True), ("b", False)]
