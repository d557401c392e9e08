"""``Bulkhead``: a bound on concurrent calls, with a bounded, time-limited queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from meshnode.resilience.calls import MaybeAsync, invoke
from meshnode.resilience.durations import DurationLike, seconds

T = TypeVar("T")


class BulkheadFullError(Exception):
    """Every slot is taken and the queue is full: the call was refused, not run."""


class Bulkhead:
    """At most ``max_concurrent`` calls at once; ``max_pending`` more wait ``queue_timeout``."""

    def __init__(
        self, max_concurrent: int, *, max_pending: int = 0, queue_timeout: DurationLike = 1.0
    ):
        self.max_concurrent = max_concurrent
        self.max_pending = max_pending
        self.queue_timeout = seconds(queue_timeout, "queue_timeout")
        self._slots = trio.Semaphore(max_concurrent)
        self.pending = 0
        self.rejected = 0

    @property
    def in_flight(self) -> int:
        return self.max_concurrent - self._slots.value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.value == 0 and self.pending >= self.max_pending:
            self.rejected += 1
            raise BulkheadFullError(f"{self.max_concurrent} calls running, {self.pending} waiting")
        self.pending += 1
        try:
            with trio.move_on_after(self.queue_timeout) as waited:
                await self._slots.acquire()
        finally:
            self.pending -= 1
        if waited.cancelled_caught:
            self.rejected += 1
            raise BulkheadFullError(f"no slot came free within {self.queue_timeout:g}s")
        try:
            yield
        finally:
            self._slots.release()

    async def call(self, fn: MaybeAsync[T], *args: Any) -> T:
        async with self.slot():
            return await invoke(fn, *args)
