"""Per-upstream request-path state built from policy: rate limiter, retry budget, stale cache,
adaptive concurrency limit.

The request path is the only writer of these, so they need no actor of their
own. A reload rebuilds only what its policy change concerns: an unchanged
``[rate_limit]`` keeps its buckets, an unchanged ``[retry] budget`` its counts,
an unchanged ``[fallback]`` its cached responses, an unchanged ``[concurrency_limit]`` the
limit it found.
"""

from __future__ import annotations

import random

import attrs

from meshnode.net.pulse import Pulse
from meshnode.policy.models import (
    ConcurrencyLimitPolicy,
    FallbackPolicy,
    RateLimitPolicy,
    RetryBudgetPolicy,
    UpstreamPolicy,
)
from meshnode.resilience.core.budget import RetryBudget
from meshnode.resilience.core.concurrency import LimitConfig, LimiterCore
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
        self.budget_policy = policy.retry.budget if policy.retry is not None else None
        self.fallback_policy = policy.fallback
        self.limit_policy = policy.concurrency_limit
        self.rate_limiter: RateLimiter | None
        self.concurrency: LimiterCore | None
        self.retry_budget: RetryBudget | None
        self.stale_cache: LRU[bytes, CachedResponse] | None
        self.rng: random.Random  # jitter, chaos and the random strategies share one source
        if previous is None:
            self.rate_limiter = _rate_limiter(policy.rate_limit)
            self.retry_budget = _budget(self.budget_policy)
            self.stale_cache = _cache(policy.fallback)
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
        self.rng = previous.rng
        if previous.limit_policy == self.limit_policy:
            self.concurrency, self.limit_freed = previous.concurrency, previous.limit_freed
        else:
            self.concurrency, self.limit_freed = _limiter(self.limit_policy, self.rng), Pulse()


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
