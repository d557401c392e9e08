"""``TokenBucket``: a rate limit for any Trio program, on the node's token bucket."""

from __future__ import annotations

import trio

from meshnode.resilience.core.token_bucket import TokenBucket as _Bucket
from meshnode.resilience.runs import PerRun


class RateLimitedError(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; try again in {retry_after:.3f}s")
        self.retry_after = retry_after


class TokenBucket:
    """``rate`` calls a second, bursts of ``burst``: ``try_acquire``, or wait in ``acquire``.
    It can be built anywhere, at module level too, and starts full in the ``trio.run``
    that first uses it (``meshnode.resilience.runs``)."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate={rate!r}, burst={burst!r}: a rate above 0 and a burst of 1+")
        self._buckets = PerRun("TokenBucket", lambda: _Bucket(rate, burst, trio.current_time()))

    def try_acquire(self) -> bool:
        return self._buckets.get().take(trio.current_time()) == 0.0

    def check(self) -> None:
        """Take a token or raise ``RateLimitedError`` saying when to come back."""
        wait = self._buckets.get().take(trio.current_time())
        if wait:
            raise RateLimitedError(wait)

    async def acquire(self) -> None:
        while wait := self._buckets.get().take(trio.current_time()):
            await trio.sleep(wait)
