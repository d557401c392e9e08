"""The library's LoadBalancer: strategies, sessions, the bulkhead, and metrics."""

from __future__ import annotations

import collections
import random

from meshnode.resilience import Instance, LoadBalancer

INSTANCES = [Instance("a", weight=3), Instance("b"), Instance("c")]


def test_round_robin_and_weighted() -> None:
    balancer = LoadBalancer("round-robin", sticky_sessions=False)
    picks = [balancer.select_instance(INSTANCES).id for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    weighted = LoadBalancer("weighted-round-robin", sticky_sessions=False)
    counts = collections.Counter(
        weighted.select_instance(INSTANCES).id
        for _ in range(500)  # type: ignore[union-attr]
    )
    assert counts == {"a": 300, "b": 100, "c": 100}


def test_sessions_stick_and_clear() -> None:
    balancer = LoadBalancer("random", rng=random.Random(4))
    first = balancer.select_instance(INSTANCES, client_id="client-1")
    assert all(balancer.select_instance(INSTANCES, "client-1") == first for _ in range(20))
    assert balancer.clear_session("client-1")
    assert not balancer.clear_session("client-1")


def test_least_connections_and_the_limit() -> None:
    balancer = LoadBalancer(
        "least-connections",
        max_connections_per_instance=2,
        sticky_sessions=False,
        rng=random.Random(1),
    )
    for _ in range(2):
        balancer.on_connection_start("a")
    picks = {balancer.select_instance(INSTANCES).id for _ in range(50)}  # type: ignore[union-attr]
    assert "a" not in picks  # full
    balancer.on_connection_end("a", latency=0.02)
    balancer.on_connection_end("a", latency=0.04, failed=True)
    metrics = balancer.metrics()
    assert metrics["strategy"] == "least-connections"
    assert metrics["instances"]["a"]["active_connections"] == 0
    assert metrics["instances"]["a"]["total_requests"] == 2
    assert metrics["instances"]["a"]["failures"] == 1
    assert balancer.select_instance([]) is None
