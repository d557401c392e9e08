"""Per-upstream request-path state built from policy: rate limiter, retry budget, stale cache,
adaptive concurrency limit, the recent latencies a percentile hedge delay reads, and the
fault plan ``[chaos]`` draws from (made once here, not looked up per request).

The request path is the only writer of these, so they need no actor of their
own. A reload rebuilds only what its policy change concerns: an unchanged
``[rate_limit]`` keeps its buckets, an unchanged ``[retry] budget`` its counts,
an unchanged ``[fallback]`` its cached responses, an unchanged ``[concurrency_limit]`` the
limit it found, an unchanged ``[hedge]`` its latencies.

Retries and hedges spend one budget: ``[retry] budget``, or its defaults when an upstream
hedges without a ``[retry]``, so that a slow upstream never gets double the load.
"""

from __future__ import annotations

import math
import random

import attrs

from meshnode.net.pulse import Pulse
from meshnode.policy.models import (
    ChaosPolicy,
    ConcurrencyLimitPolicy,
    FallbackPolicy,
    HedgePolicy,
    RateLimitPolicy,
    RetryBudgetPolicy,
    UpstreamPolicy,
)
from meshnode.resilience.core.budget import RetryBudget
from meshnode.resilience.core.concurrency import LimitConfig, LimiterCore
from meshnode.resilience.core.faults import FaultPlan
from meshnode.resilience.core.latencies import RecentLatencies
from meshnode.resilience.core.lru import LRU
from meshnode.resilience.core.rate_limit import RateLimiter

HeaderList = list[tuple[bytes, bytes]]


@attrs.frozen
class CachedResponse:
    headers: HeaderList
    body: bytes
    stored_at: float


class Protections:
    def __init__(self, policy: UpstreamPolicy, previous: Protections | None = None) -> None:
        self.rate_limit_policy = policy.rate_limit
        self.budget_policy = _budget_policy(policy)
        self.fallback_policy = policy.fallback
        self.limit_policy = policy.concurrency_limit
        self.hedge_policy = policy.hedge
        self.rate_limiter: RateLimiter | None
        self.concurrency: LimiterCore | None
        self.retry_budget: RetryBudget | None
        self.stale_cache: LRU[bytes, CachedResponse] | None
        self.head_latencies: RecentLatencies | None  # read by a percentile hedge delay
        self.rng: random.Random  # jitter, chaos and the random strategies share one source
        self.fault_plan = _fault_plan(policy.chaos)
        if previous is None:
            self.rate_limiter = _rate_limiter(policy.rate_limit)
            self.retry_budget = _budget(self.budget_policy)
            self.stale_cache = _cache(policy.fallback)
            self.head_latencies = _latencies(policy.hedge)
            self.rng = random.Random()
            self.concurrency = _limiter(self.limit_policy, self.rng)
            self.limit_freed = Pulse()  # a request under the limit ended: room for a waiter
            return
        self.rate_limiter = (
            previous.rate_limiter
            if previous.rate_limit_policy == self.rate_limit_policy
            else _rate_limiter(policy.rate_limit)
        )
        self.retry_budget = (
            previous.retry_budget
            if previous.budget_policy == self.budget_policy
            else _budget(self.budget_policy)
        )
        self.stale_cache = (
            previous.stale_cache
            if previous.fallback_policy == self.fallback_policy
            else _cache(policy.fallback)
        )
        self.head_latencies = (
            previous.head_latencies
            if previous.hedge_policy == self.hedge_policy
            else _latencies(policy.hedge)
        )
        self.rng = previous.rng
        if previous.limit_policy == self.limit_policy:
            self.concurrency, self.limit_freed = previous.concurrency, previous.limit_freed
        else:
            self.concurrency, self.limit_freed = _limiter(self.limit_policy, self.rng), Pulse()

    def hedge_delay(self) -> float:
        """Seconds a try waits for its response head before a hedge goes out: ``[hedge]
        delay``, or the percentile of the upstream's recent heads (infinite, so no hedge,
        until enough were seen, or without a ``[hedge]``)."""
        policy = self.hedge_policy
        if policy is None:
            return math.inf
        if policy.delay.seconds is not None:
            return policy.delay.seconds
        latencies, percentile = self.head_latencies, policy.delay.percentile
        if latencies is None or percentile is None:
            return math.inf
        found = latencies.percentile(percentile)
        return math.inf if found is None else found


def _fault_plan(chaos: ChaosPolicy | None) -> FaultPlan | None:
    if chaos is None:
        return None
    return FaultPlan(chaos.abort_percent, chaos.abort_status, chaos.delay_percent, chaos.delay)


def _budget_policy(policy: UpstreamPolicy) -> RetryBudgetPolicy | None:
    if policy.retry is not None:
        return policy.retry.budget
    return RetryBudgetPolicy() if policy.hedge is not None else None


def _latencies(policy: HedgePolicy | None) -> RecentLatencies | None:
    if policy is None or policy.delay.percentile is None:
        return None
    return RecentLatencies()


def _rate_limiter(policy: RateLimitPolicy | None) -> RateLimiter | None:
    if policy is None:
        return None
    burst = policy.burst if policy.burst is not None else max(1, round(policy.requests_per_second))
    return RateLimiter(
        policy.requests_per_second,
        burst,
        per_client=policy.per == "client",
        max_clients=policy.max_clients,
    )


def _budget(policy: RetryBudgetPolicy | None) -> RetryBudget | None:
    if policy is None:
        return None
    return RetryBudget(policy.ratio, policy.min_per_second)


def _cache(policy: FallbackPolicy | None) -> LRU[bytes, CachedResponse] | None:
    if policy is None or policy.kind != "stale-cache":
        return None
    return LRU(policy.max_entries)


def _limiter(policy: ConcurrencyLimitPolicy | None, rng: random.Random) -> LimiterCore | None:
    if policy is None:
        return None
    tuning = attrs.asdict(policy)
    del tuning["queue_timeout"]  # the request path's, not the algorithm's
    return LimiterCore(LimitConfig(**tuning), rng)
