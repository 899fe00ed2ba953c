"""Tests for gateway/tasks.py: background tasks are kept alive while they run and their crashes are logged."""

from __future__ import annotations

import asyncio
import gc

from structlog.testing import capture_logs

from gateway import tasks


async def test_a_spawned_task_is_kept_until_it_ends() -> None:
    """The task survives garbage collection while it runs and is released once it ended."""
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    task = tasks.spawn(work(), name="kept")
    name = task.get_name()
    del task
    gc.collect()
    assert any(t.get_name() == name for t in tasks._running)
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not any(t.get_name() == name for t in tasks._running)


async def test_a_crashing_task_is_logged_with_its_name() -> None:
    """An exception that ends a task is logged as task_crashed, naming the task."""

    async def crash() -> None:
        raise ValueError("boom")

    with capture_logs() as logs:
        task = tasks.spawn(crash(), name="crasher")
        await asyncio.wait([task])
        await asyncio.sleep(0)
    crashed = [e for e in logs if e["event"] == "task_crashed"]
    assert len(crashed) == 1 and crashed[0]["task"] == "crasher"


async def test_a_cancelled_or_finished_task_is_not_a_crash() -> None:
    """Cancellation and a normal return log nothing."""

    async def forever() -> None:
        await asyncio.Event().wait()

    async def quick() -> int:
        return 1

    with capture_logs() as logs:
        cancelled = tasks.spawn(forever())
        finished = tasks.spawn(quick())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait([cancelled, finished])
        await asyncio.sleep(0)
    assert finished.result() == 1
    assert [e for e in logs if e["event"] == "task_crashed"] == []
    assert cancelled not in tasks._running and finished not in tasks._running
