"""``Retry``: the seed's retry middleware for any Trio program, with the node's backoff.

retry = Retry(max_retries=5, initial_delay=0.1, backoff="exponential", jitter=0.2,
              retryable_errors=(ConnectionError, trio.TooSlowError))
rows = await retry.call(query, "SELECT 1")

@retry_with(max_retries=3, initial_delay=1.0, backoff="fibonacci")
async def get_user(user_id): ...
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import trio

from meshnode.resilience.core.backoff import Strategy, delay

P = ParamSpec("P")
T = TypeVar("T")

ShouldRetry = Callable[[BaseException, int], bool]
OnRetry = Callable[[int, float, BaseException], object]
OnExhausted = Callable[[BaseException], object]


class Retry:
    def __init__(
        self,
        *,
        max_retries: int = 3,
        initial_delay: float = 0.1,
        max_delay: float = 5.0,
        backoff: Strategy = "exponential",
        multiplier: float = 2.0,
        jitter: float = 0.2,
        retryable_errors: tuple[type[BaseException], ...] = (Exception,),
        should_retry: ShouldRetry | None = None,
        on_retry: OnRetry | None = None,
        on_max_retries_reached: OnExhausted | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``should_retry(error, attempt)``, when given, decides instead of ``retryable_errors``.

        Callbacks may be plain or coroutine functions; ``on_retry(attempt, delay, error)``
        runs before each wait, ``on_max_retries_reached(error)`` before the last error is raised.
        """
        self.max_retries = max_retries
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.backoff = backoff
        self.multiplier = multiplier
        self.jitter = jitter
        self.retryable_errors = retryable_errors
        self.should_retry = should_retry
        self.on_retry = on_retry
        self.on_max_retries_reached = on_max_retries_reached
        self._rng = rng or random.Random()

    def delay_for(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (from 1), jitter included."""
        return delay(
            attempt,
            self.backoff,
            self.initial_delay,
            self.max_delay,
            multiplier=self.multiplier,
            jitter=self.jitter,
            rng=self._rng,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        attempt = 0
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                attempt += 1
                if not self._retryable(error, attempt):
                    raise
                if attempt > self.max_retries:
                    await _maybe_await(
                        self.on_max_retries_reached and self.on_max_retries_reached(error)
                    )
                    raise
                wait = self.delay_for(attempt)
                await _maybe_await(self.on_retry and self.on_retry(attempt, wait, error))
            await trio.sleep(wait)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Use an instance as a decorator of async functions."""

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return wrapper

    def _retryable(self, error: BaseException, attempt: int) -> bool:
        if self.should_retry is not None:
            return self.should_retry(error, attempt)
        return isinstance(error, self.retryable_errors)


def retry(**options: Any) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """``@retry(max_retries=3, ...)``: the seed's ``@Retry(...)`` decorator."""
    return Retry(**options)


NETWORK_ERRORS = (OSError, TimeoutError, trio.TooSlowError, trio.BrokenResourceError)


class RetryPresets:
    """The seed's presets, as starting points."""

    @staticmethod
    def network_request() -> Retry:
        return Retry(
            max_retries=3,
            initial_delay=0.1,
            max_delay=5.0,
            jitter=0.2,
            retryable_errors=NETWORK_ERRORS,
        )

    @staticmethod
    def database_operation() -> Retry:
        return Retry(
            max_retries=5,
            initial_delay=0.05,
            max_delay=2.0,
            jitter=0.2,
            retryable_errors=NETWORK_ERRORS,
        )

    @staticmethod
    def critical_operation() -> Retry:
        return Retry(max_retries=10, initial_delay=0.5, max_delay=30.0, jitter=0.3)

    @staticmethod
    def quick_retry() -> Retry:
        return Retry(
            max_retries=2, initial_delay=0.01, max_delay=0.1, backoff="constant", jitter=0.0
        )


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value
