"""Whether a dependency (the state store, the audit log) works right now.

A store reports every write's outcome here. The first failure of an episode is
logged once at error level (not once per message), readiness turns false, and a
probe runs every few seconds until a write works again, so that readiness comes
back even when no traffic arrives. Callers that found the store failing can
``wait`` a little for it.

A nearly full disk fails some writes and takes others: readiness follows each
outcome, but the episode ends (``store_recovered``, with its length) only after
``QUIET_SECONDS`` without a failure, so a flapping store is one episode, not one
error line per flap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from gateway import tasks

log = structlog.get_logger(__name__)


#: how often a failing dependency is probed
PROBE_SECONDS = 2.0


#: how long writes must work without a failure before an episode is over
QUIET_SECONDS = 10.0


class Health:
    """The health of one dependency, named ``name`` in logs and readiness."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[None]] | None = None,
        *,
        every: float = 0,
        quiet: float = QUIET_SECONDS,
    ) -> None:
        self.name = name
        self._probe = probe
        self._every = every or PROBE_SECONDS
        self._quiet = quiet
        self._healthy = True
        #: an episode is open from its first failure until QUIET_SECONDS without one
        self._episode = False
        self._since = 0.0
        self._last_failure = 0.0
        self._last_error = ""
        self._recovered = asyncio.Event()
        self._recovered.set()
        self._prober: asyncio.Task[None] | None = None
        self.episodes = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_error(self) -> str:
        """The reason of the current (or last) failure."""
        return self._last_error

    def failed(self, code: str, reason: str) -> None:
        """A write failed; logs at error once per episode and starts probing."""
        self._last_error = f"{code}: {reason}"
        self._last_failure = time.monotonic()
        self._healthy = False
        self._recovered.clear()
        if self._episode:
            return
        self._episode = True
        self._since = self._last_failure
        self.episodes += 1
        log.error("store_failed", store=self.name, code=code, reason=reason)
        if self._prober is None or self._prober.done():
            try:
                self._prober = tasks.spawn(self._watch(), name=f"probe-{self.name}")
            except RuntimeError:  # no running loop (a synchronous caller): nothing to watch
                self._prober = None

    def succeeded(self) -> None:
        """A write worked: ready again (the episode ends after a quiet period)."""
        if self._healthy:
            return
        self._healthy = True
        self._recovered.set()
        if self._prober is None:  # nobody watches the quiet period: end the episode now
            self._end_episode()

    def _end_episode(self) -> None:
        self._episode = False
        log.warning(
            "store_recovered",
            store=self.name,
            after_seconds=round(self._last_failure - self._since, 1),
        )

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the dependency to be healthy; True if it is."""
        if self._healthy:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._recovered.wait()
        except TimeoutError:
            return False
        return True

    async def _watch(self) -> None:
        """Probe while failing; end the episode after a quiet period."""
        try:
            while self._episode:
                await asyncio.sleep(self._every)
                if not self._healthy and self._probe is not None:
                    try:
                        await self._probe()
                    except Exception as exc:  # the store reports its own outcome
                        log.debug("store_probe_failed", store=self.name, error=str(exc))
                elif self._healthy and time.monotonic() - self._last_failure >= self._quiet:
                    self._end_episode()
        finally:
            self._prober = None

    def stop(self) -> None:
        """Stop probing (the store is closing)."""
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
