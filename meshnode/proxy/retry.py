"""Retry rules (pure): which outcomes a policy retries, and when a request may be retried."""

from __future__ import annotations

import email.utils
import functools
import time

from meshnode.net.stream import StreamReset
from meshnode.policy.models import GRPC_RETRY_STATUSES, CircuitBreakerPolicy, RetryPolicy
from meshnode.proxy.headers import HeaderList

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Never processed by the upstream: safe to send again whatever the method.
ALWAYS_SAFE = frozenset({"connect-failure", "refused-stream"})
_GRPC_NAMES = {code: name for name, code in GRPC_RETRY_STATUSES.items()}


def head_condition(status: int, headers: HeaderList, retry_on: tuple[str, ...]) -> str | None:
    """The ``retry_on`` entry a response head matches: its status, or a gRPC status name.

    gRPC statuses are read from the head, which is where a trailers-only gRPC
    error carries them; a status in real trailers comes after the body has
    been relayed, too late to retry.
    """
    text = str(status)
    if text in retry_on:
        return text
    if not _names_a_grpc_status(retry_on):  # most policies: no field of the head to read
        return None
    for name, value in headers:
        if name == b"grpc-status":
            grpc = _GRPC_NAMES.get(int(value) if value.isdigit() else -1)
            if grpc is not None and grpc in retry_on:
                return grpc
    return None


@functools.lru_cache(maxsize=64)
def _names_a_grpc_status(retry_on: tuple[str, ...]) -> bool:
    """Whether ``retry_on`` lists a gRPC status (a policy's list: a few of them a node)."""
    return not GRPC_RETRY_STATUSES.keys().isdisjoint(retry_on)


def may_resend(condition: str, method: bytes, headers: HeaderList, policy: RetryPolicy) -> bool:
    if condition in ALWAYS_SAFE or policy.retry_non_idempotent:
        return True
    return safe_to_repeat(method, headers)


def safe_to_repeat(method: bytes, headers: HeaderList) -> bool:
    """An idempotent method (RFC 9110 9.2.2), or a request that carries an idempotency key."""
    if method in IDEMPOTENT_METHODS:
        return True
    return any(name == b"idempotency-key" for name, _ in headers)


def retry_after(headers: HeaderList, now: float | None = None) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds or an HTTP date), if present."""
    for name, value in headers:
        if name != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        if text.isdigit():
            return float(text)
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None


def is_breaker_failure(policy: CircuitBreakerPolicy, status: int, error: str | None) -> bool:
    """Whether an outcome counts against the breaker: ``error`` is a condition, else ``status``."""
    failure_on = policy.failure_on
    if error is not None:
        return error in failure_on or (error == "refused-stream" and "reset" in failure_on)
    if str(status) in failure_on:
        return True
    return "5xx" in failure_on and 500 <= status <= 599 and status != 501


def resend_reason(reset: StreamReset | None, method: bytes, headers: HeaderList) -> str | None:
    """Why a try the upstream left unanswered as it recycled its connection may be sent
    again at once, free of the retry policy, its budget and the breaker: a stream it never
    processed (RFC 9113 8.7), whatever the method, and one it may have seen but dropped
    with the connection it announced it was closing (or had closed as idle), when the
    request is safe to repeat (RFC 9110 9.2.2). ``reset``: the upstream's, before any
    answer; None when the try failed otherwise."""
    if reset is None or reset.lifecycle is None:
        return None
    if not reset.refused and not safe_to_repeat(method, headers):
        return None
    return reset.lifecycle
