"""``TokenBucket``: a rate limit for any Trio program, on the node's token bucket."""

from __future__ import annotations

import trio

from meshnode.resilience.core.token_bucket import TokenBucket as _Bucket


class RateLimitedError(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; try again in {retry_after:.3f}s")
        self.retry_after = retry_after


class TokenBucket:
    """``rate`` calls a second, bursts of ``burst``: ``try_acquire``, or wait in ``acquire``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._bucket = _Bucket(rate, burst, trio.current_time())

    def try_acquire(self) -> bool:
        return self._bucket.take(trio.current_time()) == 0.0

    def check(self) -> None:
        """Take a token or raise ``RateLimitedError`` saying when to come back."""
        wait = self._bucket.take(trio.current_time())
        if wait:
            raise RateLimitedError(wait)

    async def acquire(self) -> None:
        while wait := self._bucket.take(trio.current_time()):
            await trio.sleep(wait)
