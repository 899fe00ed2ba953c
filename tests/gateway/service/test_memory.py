"""Unit tests of gateway/service/memory.py: trimming the heap after connections closed."""

from __future__ import annotations

import asyncio
import platform

import pytest

from gateway.service.memory import MemoryTrimmer

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's (the gateway runs on it)"
)


async def _trimmed(trimmer: MemoryTrimmer, times: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if trimmer.trims >= times:
                return
            await asyncio.sleep(0.01)


@glibc
async def test_the_heap_is_trimmed_once_a_burst_of_connections_closed() -> None:
    """After ``every`` closures the heap is trimmed once, a moment later, not once per connection."""
    trimmer = MemoryTrimmer(every=3, delay=0.05)
    assert trimmer.available
    for _ in range(5):
        trimmer.closed()
    await _trimmed(trimmer, 1)
    assert trimmer.trims == 1
    for _ in range(3):
        trimmer.closed()
    await _trimmed(trimmer, 2)
    assert trimmer.trims == 2


@glibc
async def test_fewer_closures_than_the_threshold_trim_nothing() -> None:
    """Two closures with a threshold of three leave the heap alone; stop cancels a pending trim."""
    trimmer = MemoryTrimmer(every=3, delay=0.05)
    trimmer.closed()
    trimmer.closed()
    with pytest.raises(TimeoutError):
        await _trimmed(trimmer, 1, timeout=0.3)
    trimmer.closed()
    trimmer.stop()
    with pytest.raises(TimeoutError):
        await _trimmed(trimmer, 1, timeout=0.3)
