"""``GET /metrics``: Prometheus exposition through prometheus-client.

The request path keeps plain counters (actors/stats.py); this collector turns
them into metric families when Prometheus scrapes, so recording a request costs
no lock and no label lookup. Labels are bounded: upstream names come from the
policies, codes from HTTP, kinds and outcomes from fixed sets; never a path or a
client. Process metrics come from prometheus-client's ProcessCollector, and the
cyclic garbage collector's (``python_gc_*``: collections per generation, objects
collected) from its GCCollector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.stats import DURATION_BUCKETS, UpstreamStats
from meshnode.net.busy_poll import BusyPoll
from meshnode.net.overload import Overload
from meshnode.net.violations import Violations
from meshnode.resilience.core.breaker import BreakerState

UNROUTED = "(none)"  # the upstream label of requests that matched no route


class MeshCollector(Collector):
    def __init__(
        self,
        groups: Callable[[], Mapping[str, UpstreamGroup]],
        unrouted: Callable[[], UpstreamStats],
        reloads: Callable[[], Mapping[str, int]],
        certificate_seconds: Callable[[], float | None] = lambda: None,
        violations: Violations | None = None,
        overload: Overload | None = None,
        busy_poll: BusyPoll | None = None,
        spans: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        """``spans``: the spans [tracing] exported and dropped, since the node started."""
        self._groups = groups
        self._spans = spans
        self._unrouted = unrouted
        self._reloads = reloads
        self._certificate_seconds = certificate_seconds
        self._violations = violations if violations is not None else Violations()
        self._overload = overload if overload is not None else Overload()
        self._busy_poll = busy_poll if busy_poll is not None else BusyPoll()

    def collect(self) -> Iterator[Metric]:
        groups = self._groups()
        stats = {name: group.stats for name, group in groups.items()}
        stats[UNROUTED] = self._unrouted()
        yield from _request_metrics(stats)
        yield from _resilience_metrics(groups)
        reloads = CounterMetricFamily(
            "meshnode_policy_reloads", "Policy reloads by result.", labels=["result"]
        )
        for result, count in self._reloads().items():
            reloads.add_metric([result], count)
        yield reloads
        restarts = CounterMetricFamily(
            "meshnode_actor_restarts", "Crashed actors restarted.", labels=["upstream", "actor"]
        )
        for name, group in groups.items():
            for actor, count in group.supervisor.restarts.items():
                restarts.add_metric([name, actor], count)
        yield restarts
        yield from _protection_metrics(self._violations, self._overload)
        yield from _busy_poll_metrics(self._busy_poll)
        exported, dropped = self._spans()
        yield CounterMetricFamily(
            "meshnode_spans_exported", "Spans the collector accepted ([tracing]).", value=exported
        )
        yield CounterMetricFamily(
            "meshnode_spans_dropped",
            "Spans lost: the export queue was full, or the collector failed or was down.",
            value=dropped,
        )
        left = self._certificate_seconds()
        if left is not None:
            yield GaugeMetricFamily(
                "meshnode_certificate_expiry_seconds",
                "Seconds until the node's certificate expires (negative: expired).",
                value=left,
            )


def _request_metrics(stats: Mapping[str, UpstreamStats]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "meshnode_requests",
        "Requests by upstream and the status answered (0: no response head, reset).",
        labels=["upstream", "code"],
    )
    duration = HistogramMetricFamily(
        "meshnode_request_duration_seconds",
        "Time from request start to its end, retries included.",
        labels=["upstream"],
    )
    for name, upstream in stats.items():
        for code, count in upstream.requests.items():
            requests.add_metric([name, str(code)], count)
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*DURATION_BUCKETS, float("inf")), upstream.duration_buckets, strict=True
        ):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        duration.add_metric([name], buckets, upstream.duration_sum)
    yield requests
    yield duration


def _resilience_metrics(groups: Mapping[str, UpstreamGroup]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "meshnode_breaker_state",
        "Breaker state: 0 closed, 1 open, 2 half-open.",
        labels=["upstream"],
    )
    rejected = CounterMetricFamily(
        "meshnode_breaker_rejected", "Requests refused by an open breaker.", labels=["upstream"]
    )
    retries = CounterMetricFamily(
        "meshnode_retries",
        "Retries made (retried), refused by the budget, skipped as too late for the deadline"
        " (deadline-skipped), or given up (exhausted).",
        labels=["upstream", "outcome"],
    )
    endpoints = GaugeMetricFamily(
        "meshnode_endpoints", "Endpoints by state.", labels=["upstream", "state"]
    )
    limited = CounterMetricFamily(
        "meshnode_rate_limited", "Requests refused by the rate limit.", labels=["upstream"]
    )
    fallbacks = CounterMetricFamily(
        "meshnode_fallbacks", "Fallback answers given, by kind.", labels=["upstream", "kind"]
    )
    bulkhead = CounterMetricFamily(
        "meshnode_bulkhead_rejected", "Requests refused by a full bulkhead.", labels=["upstream"]
    )
    in_flight = GaugeMetricFamily(
        "meshnode_requests_in_flight", "Requests being served.", labels=["upstream"]
    )
    concurrency_limit = GaugeMetricFamily(
        "meshnode_concurrency_limit",
        "The concurrency limit [concurrency_limit] found for the upstream.",
        labels=["upstream"],
    )
    concurrency_limited = CounterMetricFamily(
        "meshnode_concurrency_limited",
        "Requests refused at the upstream's concurrency limit.",
        labels=["upstream"],
    )
    goaways = CounterMetricFamily(
        "meshnode_upstream_goaways",
        "GOAWAY frames the upstream's connections received.",
        labels=["upstream"],
    )
    resent = CounterMetricFamily(
        "meshnode_requests_resent",
        "Requests sent again because the upstream left them unanswered as it recycled a "
        "connection (goaway, refused-stream, stale-connection); neither retries nor failures.",
        labels=["upstream", "reason"],
    )
    hedges = CounterMetricFamily(
        "meshnode_hedges",
        "Hedged tries: sent, won (its answer was relayed), or held back by the retry budget"
        " (budget-exhausted) or a full set of endpoints (no-endpoint).",
        labels=["upstream", "outcome"],
    )
    for name, group in groups.items():
        core = group.breaker.core
        state.add_metric([name], (core.state if core is not None else BreakerState.CLOSED).gauge)
        stats = group.stats
        rejected.add_metric([name], stats.breaker_rejected)
        for outcome, count in stats.retries.items():
            retries.add_metric([name, outcome], count)
        for state_name, count in group.picker.endpoint_states().items():
            endpoints.add_metric([name, state_name], count)
        limited.add_metric([name], stats.rate_limited)
        for kind, count in stats.fallbacks.items():
            fallbacks.add_metric([name, kind], count)
        bulkhead.add_metric([name], stats.rejected["bulkhead-full"])
        in_flight.add_metric([name], group.picker.in_flight)
        concurrency = group.protections.concurrency
        if concurrency is not None:
            concurrency_limit.add_metric([name], concurrency.limit)
            concurrency_limited.add_metric([name], stats.rejected["concurrency-limited"])
        if group.protections.hedge_policy is not None:
            for outcome, count in stats.hedges.items():
                hedges.add_metric([name, outcome], count)
        goaways.add_metric([name], stats.goaways.count)
        for reason, count in stats.resent.items():
            resent.add_metric([name, reason], count)
    yield from (state, rejected, retries, endpoints, limited, fallbacks, bulkhead, in_flight)
    yield from (goaways, resent, concurrency_limit, concurrency_limited, hedges)
    yield from _queue_metrics(groups)


def _queue_metrics(groups: Mapping[str, UpstreamGroup]) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "meshnode_queue_depth", "Requests waiting in the queue fallback.", labels=["upstream"]
    )
    oldest = GaugeMetricFamily(
        "meshnode_queue_oldest_age_seconds",
        "Age of the oldest queued request.",
        labels=["upstream"],
    )
    moved = CounterMetricFamily(
        "meshnode_queue",
        "Queued requests by what became of them: queued, delivered, "
        "dead-lettered, refused (queue full or unusable).",
        labels=["upstream", "outcome"],
    )
    for name, group in groups.items():
        plan = group.policy.fallback
        if group.queue is None or plan is None or plan.kind != "queue":
            continue
        stats = group.queue.spool.stats(name)
        depth.add_metric([name], stats["depth"])
        oldest.add_metric([name], stats["oldest_age_seconds"])
        for outcome, count in group.stats.queue.items():
            moved.add_metric([name, outcome], count)
    yield from (depth, oldest, moved)


def _protection_metrics(violations: Violations, overload: Overload) -> Iterator[Metric]:
    broken = CounterMetricFamily(
        "meshnode_protocol_violations",
        "Rules peers broke (floods, timeouts, malformed requests), by listener and kind.",
        labels=["listener", "kind"],
    )
    for (where, kind), count in sorted(violations.counts.items()):
        broken.add_metric([where, kind], count)
    yield broken
    active = GaugeMetricFamily(
        "meshnode_overload_active",
        "1 while the node is under this pressure (memory, or connections:<listener>).",
        labels=["reason"],
    )
    for reason in sorted(overload.reasons):
        active.add_metric([reason], 1)
    yield active
    yield CounterMetricFamily(
        "meshnode_overload_shed",
        "Requests answered 503 overloaded under memory pressure.",
        value=overload.shed,
    )


def _busy_poll_metrics(busy_poll: BusyPoll) -> Iterator[Metric]:
    spins = CounterMetricFamily(
        "meshnode_busy_poll_spins",
        "Event-loop spins before a sleep ([node] busy_poll): hit, an event came; miss, none did.",
        labels=["result"],
    )
    spins.add_metric(["hit"], busy_poll.hits)
    spins.add_metric(["miss"], busy_poll.misses)
    yield spins
    yield CounterMetricFamily(
        "meshnode_busy_poll_seconds",
        "CPU seconds the event loop spent spinning ([node] busy_poll).",
        value=busy_poll.spun,
    )


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class Exposition:
    """The registry ``/metrics`` renders: meshnode's families and the process's."""

    def __init__(self, collector: MeshCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
