"""The seed's anti-patterns, found in valid policies: warnings, not errors.

A policy can be valid and still do what the seed warns against (its "Anti-Patterns"
and "Best Practices"): callers retrying in step, retries that multiply a failing
upstream's load, non-idempotent requests repeated with nothing to catch a duplicate, no
timeout or one no caller waits for. ``meshnode policy validate`` prints each as a
``file: key.path: reason`` line; ``--strict`` makes them errors.
"""

from __future__ import annotations

from collections.abc import Iterator

from meshnode.policy.load import PolicySet
from meshnode.policy.models import UpstreamPolicy

MAX_ADVISED_RETRIES = 10
MAX_ADVISED_TIMEOUT = 60.0


def policy_warnings(policies: PolicySet) -> list[str]:
    return [
        f"{policies.files[name]}: {key}: {reason}"
        for name, policy in sorted(policies.upstreams.items())
        for key, reason in upstream_advice(policy)
    ]


def upstream_advice(policy: UpstreamPolicy) -> Iterator[tuple[str, str]]:
    retry = policy.retry
    if retry is not None:
        if retry.backoff == "constant" and not retry.jitter:
            yield (
                "retry.jitter",
                "constant backoff without jitter: every caller retries in step (a "
                "thundering herd); set jitter (0.2) or an exponential backoff",
            )
        if retry.max_retries > MAX_ADVISED_RETRIES:
            yield (
                "retry.max_retries",
                f"{retry.max_retries} retries multiply the load on a failing upstream; "
                f"keep to {MAX_ADVISED_RETRIES} or fewer, and let the breaker and a fallback "
                "take over",
            )
        if retry.retry_non_idempotent and policy.fallback is None:
            yield (
                "retry.retry_non_idempotent",
                "non-idempotent requests are sent again, and may run twice, with no "
                "fallback: have callers send an idempotency-key header instead",
            )
    request = float(policy.timeout.request)
    if request == 0:
        yield (
            "timeout.request",
            "no request timeout: a hung upstream holds its callers for ever",
        )
    elif request > MAX_ADVISED_TIMEOUT:
        yield (
            "timeout.request",
            f"{policy.timeout.request} is longer than callers wait; keep it to "
            f"{MAX_ADVISED_TIMEOUT:g}s or less, and fail fast",
        )
