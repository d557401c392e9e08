"""Rate limiting (pure): one token bucket, or one per client with a bounded set of clients."""

from __future__ import annotations

from meshnode.resilience.core.lru import LRU
from meshnode.resilience.core.token_bucket import TokenBucket


class RateLimiter:
    """``check`` answers 0.0 (go ahead) or the seconds until the caller may try again.

    Per client, at most ``max_clients`` buckets are kept; the least recently
    seen client is forgotten first (and starts again with a full bucket).
    """

    def __init__(self, rate: float, burst: int, *, per_client: bool, max_clients: int) -> None:
        self.rate = rate
        self.burst = burst
        self.per_client = per_client
        self._shared: TokenBucket | None = None
        self._clients: LRU[bytes, TokenBucket] = LRU(max_clients)

    def check(self, client: bytes, now: float) -> float:
        if self.per_client:
            bucket = self._clients.get(client)
            if bucket is None:
                bucket = TokenBucket(self.rate, self.burst, now)
                self._clients.put(client, bucket)
        else:
            if self._shared is None:
                self._shared = TokenBucket(self.rate, self.burst, now)
            bucket = self._shared
        return bucket.take(now)
