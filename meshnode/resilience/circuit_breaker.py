"""``CircuitBreaker``: the seed's breaker for any Trio program, on the node's own state machine.

breaker = CircuitBreaker("payment-gateway", failure_threshold=5, reset_timeout="5m")
result = await breaker.call(process_payment, transaction, fallback=queue_payment)
result = await breaker.execute(lambda: process_payment(transaction), queue_payment)  # the seed's

A breaker can be built anywhere, at module level too; it serves one ``trio.run`` at a time
(``meshnode.resilience.runs``).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import attrs
import trio

from meshnode.resilience.calls import MaybeAsync, invoke
from meshnode.resilience.core.breaker import (
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Override,
    Transition,
)
from meshnode.resilience.durations import DurationLike, optional_seconds, seconds
from meshnode.resilience.runs import PerRun

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
        timeout: DurationLike | None = 10.0,
        reset_timeout: DurationLike = 60.0,
        volume_threshold: int = 10,
        half_open_max_requests: int = 3,
        window: DurationLike = 10.0,
        slow_call_duration: DurationLike | None = None,
        slow_call_rate_percentage: float = 100.0,
        is_failure: Callable[[BaseException], bool | Awaitable[bool]] = lambda exc: True,
    ) -> None:
        """``timeout`` bounds each call (None: no bound); a call that times out is a failure.
        Durations follow ``meshnode.resilience.durations`` ("5m", a timedelta, seconds).

        ``is_failure`` decides which exceptions count against the breaker (a
        validation error, say, need not); every exception is re-raised.
        """
        self.name = name
        self.timeout = optional_seconds(timeout, "timeout")
        self._is_failure = is_failure
        self._listeners: list[StateListener] = []
        self._announcing: list[Awaitable[object]] = []  # async listeners' calls, to await
        self._config = BreakerConfig(
            failure_threshold=failure_threshold,
            failure_threshold_percentage=failure_threshold_percentage,
            volume_threshold=volume_threshold,
            window=seconds(window, "window"),
            reset_timeout=seconds(reset_timeout, "reset_timeout"),
            half_open_max_requests=half_open_max_requests,
            slow_call_duration=optional_seconds(slow_call_duration, "slow_call_duration"),
            slow_call_rate_percentage=slow_call_rate_percentage,
        )
        self._cores = PerRun(f"CircuitBreaker {name!r}", self._new_core)

    def _new_core(self) -> BreakerCore:
        return BreakerCore(self._config, now=_now(), on_transition=self._announce)

    @property
    def _core(self) -> BreakerCore:
        return self._cores.get()

    @property
    def state(self) -> str:
        core = self._core
        core.poll(_now())
        return core.state.value

    def on(self, event: Literal["state-change"], listener: StateListener) -> None:
        """Call ``listener`` on each change: a plain function runs where the change is
        noticed; a coroutine function is awaited by the call that caused it, before that
        call returns (a change noticed outside a call, by reading ``state``, by the next
        call)."""
        if event != "state-change":
            raise ValueError(f"unknown event {event!r}: only 'state-change' is emitted")
        self._listeners.append(listener)

    async def call(
        self,
        fn: MaybeAsync[T],
        *args: Any,
        fallback: MaybeAsync[T] | None = None,
    ) -> T:
        """Run ``fn(*args)`` through the breaker; if refused or failed, ``fallback()`` if given.
        ``fn`` and ``fallback`` may be plain or coroutine functions."""
        try:
            return await self._guarded(fn, args, fallback)
        finally:
            await self._announced()

    async def execute(self, fn: MaybeAsync[T], fallback: MaybeAsync[T] | None = None) -> T:
        """The seed's ``execute(fn, fallback)``: ``fn()`` through the breaker."""
        return await self.call(fn, fallback=fallback)

    async def _guarded(
        self, fn: MaybeAsync[T], args: tuple[Any, ...], fallback: MaybeAsync[T] | None
    ) -> T:
        core = self._core
        started = _now()
        permit = core.admit(started)
        if permit is None:
            if fallback is not None:
                return await invoke(fallback)
            raise CircuitOpenError(self.name)
        try:
            with trio.fail_after(self.timeout) if self.timeout else contextlib.nullcontext():
                result = await invoke(fn, *args)
        except trio.Cancelled:
            core.release(permit)
            raise
        except Exception as exc:
            if isinstance(exc, TypeError) and not _takes(fn, args):
                core.release(permit)  # the call was never made: the caller's mistake
                raise TypeError(
                    f"{_name(fn)} does not take {len(args)} positional argument(s): "
                    "call(fn, *args, fallback=...) passes them all to fn; the seed's "
                    "execute(fn, fallback) is breaker.execute(fn, fallback)"
                ) from exc
            now = _now()
            failed = bool(await invoke(self._is_failure, exc))
            core.record(permit, failed=failed, duration=now - started, now=_now())
            if fallback is not None:
                return await invoke(fallback)
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
            result = listener(change)
            if inspect.isawaitable(result):
                self._announcing.append(result)

    async def _announced(self) -> None:
        while self._announcing:
            await self._announcing.pop(0)


def _now() -> float:
    return trio.current_time()


def _takes(fn: Callable[..., object], args: tuple[Any, ...]) -> bool:
    """Whether ``fn`` accepts ``args`` (a TypeError from a call it could not take is not
    the call failing)."""
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): assume it does
        return True
    return True


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


__all__ = ["BreakerMetrics", "BreakerState", "CircuitBreaker", "CircuitOpenError", "StateChange"]
