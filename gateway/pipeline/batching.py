"""Batches on the partner link: one POST and one receipt list for several envelopes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway import tasks
from gateway.pipeline.context import VerifiedReceipt

log = structlog.get_logger(__name__)

Post = Callable[[str, list[bytes]], Awaitable[VerifiedReceipt]]


class Batcher:
    """Gathers one partner's envelopes for at most ``wait`` seconds or ``size`` items.

    Each envelope keeps its own signature; the partner answers the batch with one
    signed receipt list, which is verified once (by ``post``) and handed to every
    waiting message.
    """

    def __init__(self, post: Post, partner: str, size: int, wait: float) -> None:
        self._post_batch = post
        self._partner = partner
        self._size = size
        self._wait = wait
        self._pending: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def settings(self) -> tuple[int, float]:
        """(batch size, wait in seconds)."""
        return self._size, self._wait

    async def send(self, signed: bytes) -> VerifiedReceipt:
        """Add an envelope to the next batch and wait for that batch's receipt."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[VerifiedReceipt] = loop.create_future()
        self._pending.append((signed, future))
        if len(self._pending) >= self._size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            tasks.spawn(self._post(batch), name=f"batch-{self._partner}")

    async def _post(self, batch: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]]) -> None:
        try:
            verified = await self._post_batch(self._partner, [signed for signed, _ in batch])
        except Exception as exc:  # handed to every waiting message
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(verified)
        log.debug("batch_sent", partner=self._partner, size=len(batch))
