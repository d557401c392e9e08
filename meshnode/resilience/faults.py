"""``FaultInjector``: delays and failures on purpose, for tests of the code around a call."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from meshnode.resilience.calls import MaybeAsync, invoke
from meshnode.resilience.core.faults import FaultPlan, decide
from meshnode.resilience.durations import DurationLike, seconds

T = TypeVar("T")

# An injected delay over a minute is a bare number in the seed's milliseconds (its chaos
# latency: 2000); a longer one is written with its unit.
DELAY_LIMIT = 60.0


class InjectedFaultError(Exception):
    """Raised by ``FaultInjector`` in place of the real call."""


class FaultInjector:
    """Wraps calls for tests: a share of them is delayed, a share fails, chosen at random.

    ``abort_percent`` is a percentage (30 for 30 %); ``failure_rate``, the seed's name, is
    the same share as a fraction (0.3): give one or the other. ``latency`` delays every
    call (the seed's chaos latency); ``delay`` delays ``delay_percent`` of them.
    """

    def __init__(
        self,
        *,
        abort_percent: float | None = None,
        failure_rate: float | None = None,
        delay_percent: float = 0.0,
        delay: DurationLike = 0.0,
        latency: DurationLike | None = None,
        error: Callable[[], BaseException] = lambda: InjectedFaultError("injected fault"),
        seed: int | None = None,
    ) -> None:
        if abort_percent is not None and failure_rate is not None:
            raise ValueError("give abort_percent (30 for 30 %) or failure_rate (0.3), not both")
        if failure_rate is not None and not 0 <= failure_rate <= 1:
            raise ValueError(f"failure_rate={failure_rate!r}: a fraction from 0 to 1")
        percent = failure_rate * 100 if failure_rate is not None else abort_percent or 0.0
        if not 0 <= percent <= 100 or not 0 <= delay_percent <= 100:
            raise ValueError("abort_percent and delay_percent are percentages from 0 to 100")
        wait = seconds(delay, "delay", limit=DELAY_LIMIT)
        if latency is not None:
            if delay or delay_percent:
                raise ValueError("give latency (every call) or delay with delay_percent")
            wait, delay_percent = seconds(latency, "latency", limit=DELAY_LIMIT), 100.0
        self._plan = FaultPlan(percent, 503, delay_percent, wait)
        self._error = error
        self._rng = random.Random(seed)
        self.aborted = 0
        self.delayed = 0

    async def call(self, fn: MaybeAsync[T], *args: Any) -> T:
        fault = decide(self._plan, self._rng)
        if fault.delay:
            self.delayed += 1
            await trio.sleep(fault.delay)
        if fault.abort_status is not None:
            self.aborted += 1
            raise self._error()
        return await invoke(fn, *args)
