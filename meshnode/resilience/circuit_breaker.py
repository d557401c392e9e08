"""``CircuitBreaker``: the seed's breaker for any Trio program, on the node's own state machine.

breaker = CircuitBreaker("payment-gateway", failure_threshold=5, reset_timeout=300.0)
result = await breaker.call(process_payment, transaction, fallback=queue_payment)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import attrs
import trio

from meshnode.resilience.core.breaker import (
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Override,
    Transition,
)

T = TypeVar("T")


class CircuitOpenError(Exception):
    """The breaker refused the call without making it."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit breaker {name!r} is open")
        self.name = name


@attrs.frozen
class StateChange:
    name: str
    from_: str
    to: str
    reason: str
    timestamp: float


@attrs.frozen
class BreakerMetrics:
    total_requests: int
    failed_requests: int
    rejected_requests: int
    error_rate: float  # over the rolling window
    current_state: str


StateListener = Callable[[StateChange], object]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        failure_threshold_percentage: float = 50.0,
        timeout: float | None = 10.0,
        reset_timeout: float = 60.0,
        volume_threshold: int = 10,
        half_open_max_requests: int = 3,
        window: float = 10.0,
        slow_call_duration: float | None = None,
        slow_call_rate_percentage: float = 100.0,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
    ) -> None:
        """``timeout`` bounds each call (None: no bound); a call that times out is a failure.

        ``is_failure`` decides which exceptions count against the breaker (a
        validation error, say, need not); every exception is re-raised.
        """
        self.name = name
        self.timeout = timeout
        self._is_failure = is_failure
        self._listeners: list[StateListener] = []
        self._core = BreakerCore(
            BreakerConfig(
                failure_threshold=failure_threshold,
                failure_threshold_percentage=failure_threshold_percentage,
                volume_threshold=volume_threshold,
                window=window,
                reset_timeout=reset_timeout,
                half_open_max_requests=half_open_max_requests,
                slow_call_duration=slow_call_duration,
                slow_call_rate_percentage=slow_call_rate_percentage,
            ),
            now=_now(),
            on_transition=self._announce,
        )

    @property
    def state(self) -> str:
        self._core.poll(_now())
        return self._core.state.value

    def on(self, event: Literal["state-change"], listener: StateListener) -> None:
        """Call ``listener`` (a plain function: it runs inside the call that caused the change)."""
        if event != "state-change":
            raise ValueError(f"unknown event {event!r}: only 'state-change' is emitted")
        self._listeners.append(listener)

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        fallback: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``fn(*args)`` through the breaker; if refused or failed, ``fallback()`` if given."""
        core = self._core
        started = _now()
        permit = core.admit(started)
        if permit is None:
            if fallback is not None:
                return await fallback()
            raise CircuitOpenError(self.name)
        try:
            with trio.fail_after(self.timeout) if self.timeout else contextlib.nullcontext():
                result = await fn(*args)
        except trio.Cancelled:
            core.release(permit)
            raise
        except Exception as exc:
            now = _now()
            core.record(permit, failed=self._is_failure(exc), duration=now - started, now=now)
            if fallback is not None:
                return await fallback()
            raise
        now = _now()
        core.record(permit, failed=False, duration=now - started, now=now)
        return result

    def metrics(self) -> BreakerMetrics:
        core = self._core
        now = _now()
        core.poll(now)
        return BreakerMetrics(
            total_requests=core.total_calls,
            failed_requests=core.total_failures,
            rejected_requests=core.rejected,
            error_rate=core.error_rate(now),
            current_state=core.state.value,
        )

    def force_open(self) -> None:
        self._core.force(Override.OPEN, _now())

    def force_closed(self) -> None:
        self._core.force(Override.CLOSED, _now())

    def reset(self) -> None:
        """Back to automatic operation, closed."""
        self._core.force(Override.AUTO, _now())

    def _announce(self, transition: Transition) -> None:
        change = StateChange(
            self.name,
            transition.previous.value,
            transition.current.value,
            transition.reason,
            time.time(),
        )
        for listener in self._listeners:
            listener(change)


def _now() -> float:
    return trio.current_time()


__all__ = ["BreakerMetrics", "BreakerState", "CircuitBreaker", "CircuitOpenError", "StateChange"]
