"""Per-upstream counters for metrics and the admin API, kept as plain numbers.

The request path only adds to ints here (a bisect for the latency histogram);
``/metrics`` turns them into Prometheus families at scrape time, so recording
costs no lock, no label lookup and no allocation per request. They live on the
upstream group, so they survive reloads of its policy.
"""

from __future__ import annotations

from bisect import bisect_left

from meshnode.net.pool import GoAwayCounter
from meshnode.net.stream import GOAWAY, REFUSED, STALE

# Request duration buckets, in seconds: from a fast local call to a slow retry chain.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class UpstreamStats:
    __slots__ = (
        "breaker_rejected",
        "duration_buckets",
        "duration_count",
        "duration_sum",
        "fallbacks",
        "goaways",
        "hedges",
        "queue",
        "rate_limited",
        "rejected",
        "requests",
        "resent",
        "retries",
        "tries",
    )

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}  # by status code (the client's)
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.duration_count = 0
        self.retries = {"retried": 0, "budget-exhausted": 0, "deadline-skipped": 0, "exhausted": 0}
        # Tries made, requests that needed more than one, and those a retry saved.
        self.tries = {"total": 0, "retried_requests": 0, "recovered": 0}
        self.rate_limited = 0
        self.breaker_rejected = 0
        self.fallbacks: dict[str, int] = {}
        self.rejected = {"bulkhead-full": 0, "concurrency-limited": 0}
        # Hedged tries sent, those whose answer was relayed, and hedges the retry budget or
        # a full set of endpoints held back.
        self.hedges = {"sent": 0, "won": 0, "budget-exhausted": 0, "no-endpoint": 0}
        self.queue = {"queued": 0, "delivered": 0, "dead-lettered": 0, "refused": 0}
        # The upstream recycling its connections: GOAWAYs received, and requests it left
        # unanswered that were sent again (free: neither tries nor failures), by why.
        self.goaways = GoAwayCounter()
        self.resent = {GOAWAY: 0, REFUSED: 0, STALE: 0}

    def observe(self, status: int, seconds: float) -> None:
        requests = self.requests
        requests[status] = requests.get(status, 0) + 1
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def count_fallback(self, kind: str) -> None:
        self.fallbacks[kind] = self.fallbacks.get(kind, 0) + 1
