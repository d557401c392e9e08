"""``AdaptiveLimiter``: a concurrency limit that finds an upstream's capacity from its
latency (Netflix's concurrency-limits; the algorithms are in ``core/concurrency.py``).

    limiter = AdaptiveLimiter("vegas", initial_limit=20, max_limit=200)
    result = await limiter.call(fetch, url)   # LimitExceededError at once when over the limit

Every call's round-trip time feeds the algorithm; a call that raises ``dropped_on``
(timeouts, by default) counts as dropped, which the algorithms read as overload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from meshnode.resilience.calls import MaybeAsync, invoke
from meshnode.resilience.core.concurrency import LimitConfig, LimiterCore

T = TypeVar("T")


class LimitExceededError(Exception):
    """The limit's calls are in flight: this one was refused, not run."""


class AdaptiveLimiter:
    def __init__(
        self,
        algorithm: str = "vegas",
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        dropped_on: tuple[type[BaseException], ...] = (TimeoutError,),
        clock: Callable[[], float] = time.monotonic,
        **tuning: Any,
    ) -> None:
        """``tuning``: the algorithm's own keys (``LimitConfig``: rtt_tolerance, alpha, ...)."""
        config = LimitConfig(algorithm, initial_limit, min_limit, max_limit, **tuning)
        self._core = LimiterCore(config)
        self._dropped_on = dropped_on
        self._clock = clock
        self.rejected = 0

    @property
    def limit(self) -> int:
        return self._core.limit

    @property
    def in_flight(self) -> int:
        return self._core.inflight

    async def call(self, fn: MaybeAsync[T], *args: Any) -> T:
        started_with = self._core.admit()
        if started_with is None:
            self.rejected += 1
            raise LimitExceededError(f"{self._core.inflight} calls in flight, the limit")
        core, began = self._core, self._clock()
        try:
            result = await invoke(fn, *args)
        except self._dropped_on:
            core.finish(started_with, self._clock() - began, dropped=True)
            raise
        except Exception:
            core.finish(started_with, self._clock() - began)
            raise
        except BaseException:  # cancelled: it says nothing of the upstream
            core.release()
            raise
        core.finish(started_with, self._clock() - began)
        return result

    def metrics(self) -> dict[str, Any]:
        core = self._core
        return {
            "algorithm": core.config.algorithm,
            "limit": core.limit,
            "in_flight": core.inflight,
            "rejected": self.rejected,
        }
