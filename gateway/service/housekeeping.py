"""Housekeeping of the state store: forget what the replay window no longer needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gateway.errors import GatewayError
from gateway.state.store import StateStore
from gateway.xml.envelope import DUPLICATE_RETENTION_SECONDS, FUTURE_SKEW_SECONDS

log = structlog.get_logger(__name__)


#: how often the state store forgets claims and outbox entries past the replay window
HOUSEKEEPING_SECONDS = 3600.0


#: how long a claim is kept: the replay window counts from the claim, and an envelope may
#: be dated up to the allowed skew ahead of it; an hour more for good measure
CLAIM_RETENTION_SECONDS = DUPLICATE_RETENTION_SECONDS + FUTURE_SKEW_SECONDS + 3600


async def housekeep(store: StateStore, *, leads: Callable[[], bool] = lambda: True) -> None:
    """Hourly, until cancelled: forget duplicate claims and outbox entries past the window.

    ``leads``: whether this process keeps the store now (one leader among the instances
    that share it); a round it does not lead is skipped.
    """
    while True:
        if not leads():
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            continue
        try:
            gone = await store.housekeep(time.time(), CLAIM_RETENTION_SECONDS)
        except GatewayError as exc:
            log.warning("housekeeping_failed", code=exc.code, reason=exc.reason)
        else:
            if any(gone.values()):
                log.info("housekeeping_done", **gone)
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
