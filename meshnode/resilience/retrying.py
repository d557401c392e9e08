"""``Retry``: the seed's retry middleware for any Trio program, with the node's backoff.

retry = Retry(max_retries=5, initial_delay="100ms", backoff="exponential", jitter=True,
              retryable_errors=(ConnectionError, "ECONNREFUSED", "deadlock"))
rows = await retry.call(query, "SELECT 1")
rows = await retry.execute(lambda: query("SELECT 1"))  # the seed's shape

@retry(max_retries=3, initial_delay="1s", backoff="fibonacci")
async def get_user(user_id): ...

``retryable_errors`` holds exception types, and strings: a string matches an error whose
``errno`` has that name (``"ECONNREFUSED"``), whose ``code`` attribute equals it
(``"deadlock"``, ``"ER_LOCK_DEADLOCK"``), or whose class (or a base class) has that name.
"""

from __future__ import annotations

import errno
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import attrs
import trio

from meshnode.resilience.calls import MaybeAsync, invoke
from meshnode.resilience.core.backoff import Strategy, delay
from meshnode.resilience.durations import DurationLike, seconds

P = ParamSpec("P")
T = TypeVar("T")

ShouldRetry = Callable[[BaseException, int], bool | Awaitable[bool]]
OnRetry = Callable[[int, float, BaseException], object]
OnExhausted = Callable[[BaseException], object]
ErrorKind = type[BaseException] | str

# A first retry more than a minute later is a schedule, not a retry: a bare number above
# it is the seed's milliseconds (its initialDelay: 100).
INITIAL_DELAY_LIMIT = 60.0
DEFAULT_JITTER = 0.2  # the seed's jitterFactor: a delay lands within +-20 % of its step


@attrs.frozen
class RetryMetrics:
    """The seed's retry figures: calls made, tries in all, calls that succeeded after one
    or more retries, calls that failed after retrying, and retries per call."""

    total_calls: int
    total_attempts: int
    successful_retries: int
    failed_after_retries: int
    average_retries: float


class Retry:
    def __init__(
        self,
        *,
        max_retries: int = 3,
        initial_delay: DurationLike = 0.1,
        max_delay: DurationLike = 5.0,
        backoff: Strategy = "exponential",
        multiplier: float = 2.0,
        jitter: bool | float = DEFAULT_JITTER,
        jitter_factor: float | None = None,
        retryable_errors: Sequence[ErrorKind] = (Exception,),
        should_retry: ShouldRetry | None = None,
        on_retry: OnRetry | None = None,
        on_max_retries_reached: OnExhausted | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``should_retry(error, attempt)``, when given, decides instead of ``retryable_errors``.

        ``jitter``: True for the seed's default factor (0.2), False for none, or the factor
        itself; ``jitter_factor``, the seed's name, sets the factor when given. Delays are
        durations (``meshnode.resilience.durations``). ``should_retry`` and the callbacks
        may be plain or coroutine functions; ``on_retry(attempt, delay, error)`` runs before
        each wait, ``on_max_retries_reached(error)`` before the last error is raised.
        """
        self.max_retries = max_retries
        self.initial_delay = seconds(initial_delay, "initial_delay", limit=INITIAL_DELAY_LIMIT)
        self.max_delay = seconds(max_delay, "max_delay")
        self.backoff = backoff
        self.multiplier = multiplier
        self.jitter = _jitter_factor(jitter, jitter_factor)
        self.retryable_errors = _error_kinds(retryable_errors)
        self.should_retry = should_retry
        self.on_retry = on_retry
        self.on_max_retries_reached = on_max_retries_reached
        self._rng = rng or random.Random()
        self._calls = self._attempts = self._recovered = self._exhausted = 0

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

    async def call(self, fn: MaybeAsync[T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again on retryable errors; ``fn`` may be a plain
        or a coroutine function."""
        self._calls += 1
        attempt = 0
        while True:
            self._attempts += 1
            try:
                result = await invoke(functools.partial(fn, *args, **kwargs))
            except Exception as error:
                attempt += 1
                if not await self._retryable(error, attempt):
                    self._exhausted += attempt > 1
                    raise
                if attempt > self.max_retries:
                    self._exhausted += 1
                    if self.on_max_retries_reached is not None:
                        await invoke(self.on_max_retries_reached, error)
                    raise
                wait = self.delay_for(attempt)
                if self.on_retry is not None:
                    await invoke(self.on_retry, attempt, wait, error)
            else:
                self._recovered += attempt > 0
                return result
            await trio.sleep(wait)

    async def execute(self, fn: MaybeAsync[T]) -> T:
        """The seed's ``execute(fn)``: ``fn()``, with retries."""
        return await self.call(fn)

    def metrics(self) -> RetryMetrics:
        calls = self._calls
        return RetryMetrics(
            total_calls=calls,
            total_attempts=self._attempts,
            successful_retries=self._recovered,
            failed_after_retries=self._exhausted,
            average_retries=(self._attempts - calls) / calls if calls else 0.0,
        )

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Use an instance as a decorator of async functions."""

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return wrapper

    async def _retryable(self, error: BaseException, attempt: int) -> bool:
        if self.should_retry is not None:
            return bool(await invoke(self.should_retry, error, attempt))
        return any(_matches(error, kind) for kind in self.retryable_errors)


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
        return Retry(max_retries=2, initial_delay=0.01, max_delay=0.1, backoff="constant")


def _jitter_factor(jitter: bool | float, factor: float | None) -> float:
    if factor is not None:
        return factor if jitter is not False else 0.0
    if jitter is True:
        return DEFAULT_JITTER
    if jitter is False:
        return 0.0
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter={jitter!r}: a factor from 0 to 1 (0.2 is +-20 %), or True")
    return float(jitter)


def _error_kinds(kinds: Sequence[ErrorKind]) -> tuple[ErrorKind, ...]:
    if isinstance(kinds, (str, type)):
        kinds = (kinds,)
    for kind in kinds:
        if not isinstance(kind, str) and not (
            isinstance(kind, type) and issubclass(kind, BaseException)
        ):
            raise TypeError(f"retryable_errors: {kind!r} is neither an exception type nor a name")
    return tuple(kinds)


def _matches(error: BaseException, kind: ErrorKind) -> bool:
    if isinstance(kind, type):
        return isinstance(error, kind)
    number = getattr(error, "errno", None)
    if isinstance(number, int) and errno.errorcode.get(number) == kind:
        return True
    code = getattr(error, "code", None)
    if code is not None and str(code) == kind:
        return True
    return any(cls.__name__ == kind for cls in type(error).__mro__)
