"""``FaultInjector``: delays and failures on purpose, for tests of the code around a call."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from meshnode.resilience.core.faults import FaultPlan, decide

T = TypeVar("T")


class InjectedFaultError(Exception):
    """Raised by ``FaultInjector`` in place of the real call."""


class FaultInjector:
    """Wraps calls for tests: a share of them is delayed, a share fails, chosen at random."""

    def __init__(
        self,
        *,
        abort_percent: float = 0.0,
        delay_percent: float = 0.0,
        delay: float = 0.0,
        error: Callable[[], BaseException] = lambda: InjectedFaultError("injected fault"),
        seed: int | None = None,
    ) -> None:
        self._plan = FaultPlan(abort_percent, 503, delay_percent, delay)
        self._error = error
        self._rng = random.Random(seed)
        self.aborted = 0
        self.delayed = 0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        fault = decide(self._plan, self._rng)
        if fault.delay:
            self.delayed += 1
            await trio.sleep(fault.delay)
        if fault.abort_status is not None:
            self.aborted += 1
            raise self._error()
        return await fn()
