"""Give the memory of closed connections back to the operating system.

glibc keeps what a process frees in its heap for later use and returns it only from the
heap's top: after a burst of partner connections had closed, the gateway's RSS stayed
where the burst had taken it (``bench/bench_connections.py``: 78 MB before 500
connections, 221 MB with them, still 221 MB after they closed). ``MemoryTrimmer``
calls glibc's ``malloc_trim(0)`` once enough connections have closed, a moment after
the last of a burst; with another C library it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

import structlog

from gateway import tasks

log = structlog.get_logger(__name__)


def _malloc_trim() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: bool(trim(0))


class MemoryTrimmer:
    """Trim the heap ``delay`` seconds after every ``every``-th connection closed."""

    def __init__(self, *, every: int = 64, delay: float = 2.0) -> None:
        self.every = every
        self.delay = delay
        #: how many times the heap was trimmed (for tests and metrics)
        self.trims = 0
        self._closed = 0
        self._pending: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()

    @property
    def available(self) -> bool:
        return self._trim is not None

    def closed(self) -> None:
        """One connection has closed."""
        self._closed += 1
        if self._trim is None or self._closed < self.every or self._pending is not None:
            return
        # not at once: most of a burst's connections close together
        self._pending = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self._pending = None
        self._closed = 0
        tasks.spawn(self._run(), name="malloc-trim")

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        # malloc_trim takes the heap's lock and walks it: a thread keeps the loop going
        released = await asyncio.to_thread(trim)
        self.trims += 1
        log.debug("memory_trimmed", released=released)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
