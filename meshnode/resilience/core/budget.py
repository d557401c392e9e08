"""A retry budget (pure), as Envoy and Linkerd keep one: no retry storms.

Over a rolling window, retries may be at most ``ratio`` of the requests, plus
``min_per_second`` for low traffic. A retry counts from the moment it is
decided, while it waits in backoff, so a burst of failures cannot all decide
to retry at once. Counts live in time buckets: constant memory at any rate.
"""

from __future__ import annotations

BUCKETS = 10


class RetryBudget:
    def __init__(self, ratio: float, min_per_second: float, window: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.exhausted = 0
        self._starts = [float("-inf")] * BUCKETS
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS

    def record_request(self, now: float) -> None:
        self._requests[self._bucket(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows; count it as exhausted otherwise."""
        index = self._bucket(now)
        horizon = now - self.window
        live = [i for i in range(BUCKETS) if self._starts[i] > horizon]
        requests = sum(self._requests[i] for i in live)
        retries = sum(self._retries[i] for i in live)
        if retries + 1 > self.ratio * requests + self.min_per_second * self.window:
            self.exhausted += 1
            return False
        self._retries[index] += 1
        return True

    def _bucket(self, now: float) -> int:
        width = self.window / BUCKETS
        index = int(now // width) % BUCKETS
        start = now - now % width
        if self._starts[index] != start:
            self._starts[index], self._requests[index], self._retries[index] = start, 0, 0
        return index
