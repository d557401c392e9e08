"""Range and vocabulary checks that types alone cannot express (pure)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator

import attrs

from meshnode.policy.models import (
    FAILURE_KINDS,
    FALLBACK_CONDITIONS,
    GRPC_RETRY_STATUSES,
    RETRY_CONDITIONS,
    ConcurrencyLimitPolicy,
    HedgePolicy,
    Limits,
    NodeSection,
    TracingPolicy,
    UpstreamPolicy,
)
from meshnode.policy.units import Duration

_FALLBACK_STATUS = re.compile(r"^(4|5)(\d\d|xx)$")  # "503", "5xx"

MAX_FRAME_SIZE_RANGE = (16384, 2**24 - 1)  # RFC 9113 section 6.5.2
MAX_WINDOW = 2**31 - 1
MAX_BUSY_POLL = Duration(0.001)  # a longer spin burns CPU for no further gain
MAX_HEDGES = 3  # tries at once beyond the first: more multiplies load for little gain


def _is_status(value: str) -> bool:
    return len(value) == 3 and value.isdigit() and 100 <= int(value) <= 599


def check_resilience(policy: UpstreamPolicy) -> Iterator[tuple[str, str]]:
    """Yield ``(key.path, reason)`` for every value out of its range or vocabulary."""
    section = policy.upstream
    if section.protocol == "http1" and section.tls == "mesh":
        yield (
            "upstream.protocol",
            'http1 needs tls = "none": traffic between nodes is HTTP/2 over mTLS',
        )
    yield from _at_least(
        "upstream.max_requests_per_connection", section.max_requests_per_connection, 0
    )
    yield from _limit_problems(policy.concurrency_limit)
    yield from _hedge_problems(policy.hedge)
    breaker = policy.circuit_breaker
    if breaker is not None:
        yield from _at_least("circuit_breaker.failure_threshold", breaker.failure_threshold, 1)
        yield from _percent(
            "circuit_breaker.failure_threshold_percentage", breaker.failure_threshold_percentage
        )
        yield from _at_least("circuit_breaker.volume_threshold", breaker.volume_threshold, 1)
        yield from _at_least(
            "circuit_breaker.half_open_max_requests", breaker.half_open_max_requests, 1
        )
        yield from _positive("circuit_breaker.window", breaker.window)
        yield from _percent(
            "circuit_breaker.slow_call_rate_percentage", breaker.slow_call_rate_percentage
        )
        for index, kind in enumerate(breaker.failure_on):
            if kind not in FAILURE_KINDS and not _is_status(kind):
                yield (
                    f"circuit_breaker.failure_on.{index}",
                    f"expected one of {', '.join(FAILURE_KINDS)} or an HTTP status, got {kind!r}",
                )
    retry = policy.retry
    if retry is not None:
        yield from _at_least("retry.max_retries", retry.max_retries, 0)
        yield from _positive("retry.initial_delay", retry.initial_delay)
        if retry.max_delay < retry.initial_delay:
            yield "retry.max_delay", "must not be less than initial_delay"
        if not 0 <= retry.jitter < 1:
            yield "retry.jitter", f"expected a fraction from 0 up to 1, got {retry.jitter}"
        if retry.multiplier < 1:
            yield "retry.multiplier", f"must be at least 1, got {retry.multiplier}"
        if retry.budget.ratio < 0 or retry.budget.min_per_second < 0:
            yield "retry.budget", "ratio and min_per_second must not be negative"
        for index, condition in enumerate(retry.retry_on):
            if not (
                condition in RETRY_CONDITIONS
                or condition in GRPC_RETRY_STATUSES
                or _is_status(condition)
            ):
                yield (
                    f"retry.retry_on.{index}",
                    f"expected one of {', '.join(RETRY_CONDITIONS)}, an HTTP status or a gRPC "
                    f"status ({', '.join(GRPC_RETRY_STATUSES)}), got {condition!r}",
                )
    fallback = policy.fallback
    if fallback is not None:
        for index, condition in enumerate(fallback.on):
            if condition not in FALLBACK_CONDITIONS and not _FALLBACK_STATUS.match(condition):
                yield (
                    f"fallback.on.{index}",
                    f"expected one of {', '.join(FALLBACK_CONDITIONS)}, a status from 400 "
                    f'to 599 ("503") or a class ("5xx"), got {condition!r}',
                )
        if not 100 <= fallback.status <= 599:
            yield "fallback.status", f"expected an HTTP status, got {fallback.status}"
        yield from _at_least("fallback.max_entries", fallback.max_entries, 1)
    balancer = policy.balancer
    yield from _at_least(
        "balancer.max_connections_per_instance", balancer.max_connections_per_instance, 1
    )
    yield from _at_least("balancer.max_pending", balancer.max_pending, 0)
    limit = policy.rate_limit
    if limit is not None:
        yield from _positive("rate_limit.requests_per_second", limit.requests_per_second)
        if limit.burst is not None:
            yield from _at_least("rate_limit.burst", limit.burst, 1)
        yield from _at_least("rate_limit.max_clients", limit.max_clients, 1)
    chaos = policy.chaos
    if chaos is not None:
        yield from _percent("chaos.abort_percent", chaos.abort_percent)
        yield from _percent("chaos.delay_percent", chaos.delay_percent)
        if not 200 <= chaos.abort_status <= 599:
            yield (
                "chaos.abort_status",
                f"expected a status from 200 to 599, got {chaos.abort_status}",
            )


STORE_SCHEMES = ("etcd", "consul")


def check_node_settings(node: NodeSection) -> Iterator[tuple[str, str]]:
    """Yield ``(node.key, reason)`` for a [node] setting out of its range."""
    if not 0 <= node.busy_poll <= MAX_BUSY_POLL:
        yield "node.busy_poll", f"expected 0s up to {MAX_BUSY_POLL}, got {node.busy_poll}"
    if node.policy_source is not None:
        problem = store_url_problem(node.policy_source)
        if problem is not None:
            yield "node.policy_source", problem


def store_url_problem(url: str) -> str | None:
    """Why ``url`` names no policy store ("etcd://host:port/prefix", or consul://); None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in STORE_SCHEMES or not parts.hostname:
        return f'expected "etcd://host:port/prefix" or "consul://host:port/prefix", got "{url}"'
    try:
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        return f'the port of "{url}" is not a number'
    if len(parts.path.strip("/")) == 0:
        return f'"{url}" names no key prefix (like /meshnode/policies)'
    return None


TRACE_PROPAGATIONS = ("tracecontext", "b3", "b3multi")
MAX_QUEUED_SPANS = 1_000_000


def check_tracing(tracing: TracingPolicy | None) -> Iterator[tuple[str, str]]:
    """Yield ``(tracing.key, reason)`` for a [tracing] setting that cannot work."""
    if tracing is None:
        return
    url = urllib.parse.urlsplit(tracing.endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        yield "tracing.endpoint", f'expected an http:// or https:// URL, got "{tracing.endpoint}"'
    if not 0 <= tracing.sample_ratio <= 1:
        yield "tracing.sample_ratio", f"expected 0 to 1, got {tracing.sample_ratio}"
    if not tracing.propagation:
        yield "tracing.propagation", f"expected at least one of {', '.join(TRACE_PROPAGATIONS)}"
    for index, name in enumerate(tracing.propagation):
        if name not in TRACE_PROPAGATIONS:
            listed = ", ".join(TRACE_PROPAGATIONS)
            yield f"tracing.propagation.{index}", f'expected one of {listed}, got "{name}"'
    if not 1 <= tracing.max_queued_spans <= MAX_QUEUED_SPANS:
        yield (
            "tracing.max_queued_spans",
            f"expected 1 to {MAX_QUEUED_SPANS}, got {tracing.max_queued_spans}",
        )
    if tracing.export_timeout <= 0:
        yield "tracing.export_timeout", f"expected more than 0s, got {tracing.export_timeout}"


def check_limits(limits: Limits) -> Iterator[tuple[str, str]]:
    """Yield ``(limits.key, reason)`` for every limit HTTP/2 or common sense cannot take."""
    for key in ("max_concurrent_streams", "max_header_count", "max_connections"):
        yield from _at_least(f"limits.{key}", getattr(limits, key), 1)
    yield from _at_least(
        "limits.max_requests_per_connection", limits.max_requests_per_connection, 0
    )
    yield from _at_least(
        "limits.max_consecutive_empty_frames", limits.max_consecutive_empty_frames, 0
    )
    low, high = MAX_FRAME_SIZE_RANGE
    if not low <= limits.max_frame_size <= high:
        yield "limits.max_frame_size", f"expected {low} to {high}, got {limits.max_frame_size}"
    for key in ("stream_window", "connection_window"):
        size = getattr(limits, key)
        if not 65535 <= size <= MAX_WINDOW:
            yield f"limits.{key}", f"expected 64KiB - 1B up to 2GiB - 1B, got {size}"
    yield from _at_least("limits.max_header_list_size", limits.max_header_list_size, 1024)
    yield from _at_least("limits.max_header_field_size", limits.max_header_field_size, 1024)
    yield from _at_least("limits.write_buffer", limits.write_buffer, limits.max_frame_size)
    for key in (
        "header_timeout",
        "first_request_timeout",
        "idle_timeout",
        "settings_timeout",
        "stream_idle_timeout",
    ):
        yield from _positive(f"limits.{key}", getattr(limits, key))
    for key, rate in attrs.asdict(limits.frame_rates).items():
        yield from _positive(f"limits.frame_rates.{key}", rate)


def _limit_problems(limit: ConcurrencyLimitPolicy | None) -> Iterator[tuple[str, str]]:
    if limit is None:
        return
    yield from _at_least("concurrency_limit.min_limit", limit.min_limit, 1)
    yield from _at_least("concurrency_limit.initial_limit", limit.initial_limit, limit.min_limit)
    yield from _at_least("concurrency_limit.max_limit", limit.max_limit, limit.initial_limit)
    for key in ("probe_interval", "long_window", "probe_multiplier"):
        yield from _at_least(f"concurrency_limit.{key}", getattr(limit, key), 1)
    yield from _at_least("concurrency_limit.queue_size", limit.queue_size, 0)
    if limit.smoothing is not None and not 0 < limit.smoothing <= 1:
        yield "concurrency_limit.smoothing", f"expected more than 0 up to 1, got {limit.smoothing}"
    if limit.rtt_tolerance < 1:
        yield "concurrency_limit.rtt_tolerance", f"must be at least 1, got {limit.rtt_tolerance}"
    if not 0 < limit.alpha < limit.beta:
        yield "concurrency_limit.beta", f"must be more than alpha ({limit.alpha}), got {limit.beta}"


def _hedge_problems(hedge: HedgePolicy | None) -> Iterator[tuple[str, str]]:
    if hedge is None:
        return
    yield from _at_least("hedge.max_hedges", hedge.max_hedges, 1)
    if hedge.max_hedges > MAX_HEDGES:
        yield "hedge.max_hedges", f"must be at most {MAX_HEDGES}, got {hedge.max_hedges}"
    percentile = hedge.delay.percentile
    if percentile is not None and not 50 <= percentile < 100:
        yield "hedge.delay", f"expected a percentile from p50 up to p99.99, got p{percentile:g}"
    if hedge.delay.seconds is not None:
        yield from _positive("hedge.delay", hedge.delay.seconds)


def _at_least(key: str, value: int, minimum: int) -> Iterator[tuple[str, str]]:
    if value < minimum:
        yield key, f"must be at least {minimum}, got {value}"


def _positive(key: str, value: float) -> Iterator[tuple[str, str]]:
    if value <= 0:
        yield key, f"must be more than 0, got {value:g}"


def _percent(key: str, value: float) -> Iterator[tuple[str, str]]:
    if not 0 <= value <= 100:
        yield key, f"expected a percentage from 0 to 100, got {value:g}"
