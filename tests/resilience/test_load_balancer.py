"""The library's LoadBalancer: strategies, sessions, the bulkhead, and metrics."""

from __future__ import annotations

import collections
import random

import pytest

from meshnode.resilience import Instance, LoadBalancer

INSTANCES = [Instance("a", weight=3), Instance("b"), Instance("c")]


def test_round_robin_and_weighted() -> None:
    balancer = LoadBalancer("round-robin")
    picks = [balancer.select_instance(INSTANCES).id for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    weighted = LoadBalancer("weighted-round-robin")
    counts = collections.Counter(
        weighted.select_instance(INSTANCES).id
        for _ in range(500)  # type: ignore[union-attr]
    )
    assert counts == {"a": 300, "b": 100, "c": 100}


def test_sessions_stick_and_clear() -> None:
    balancer = LoadBalancer("random", session_affinity=True, rng=random.Random(4))
    first = balancer.select_instance(INSTANCES, client_id="client-1")
    assert all(balancer.select_instance(INSTANCES, "client-1") == first for _ in range(20))
    assert balancer.clear_session("client-1")
    assert not balancer.clear_session("client-1")


def test_least_connections_and_the_limit() -> None:
    balancer = LoadBalancer(
        "least-connections",
        max_connections_per_instance=2,
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


def test_affinity_is_asked_for_and_weight_may_be_metadata() -> None:
    """The seed's sessionAffinity is opt-in, and its instances carry metadata.weight."""
    balancer = LoadBalancer("round-robin")
    picks = [balancer.select_instance(INSTANCES, "client-1").id for _ in range(3)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c"]  # a client id alone sticks to nothing
    seeded = [Instance("a", metadata={"weight": "3"}), Instance("b"), Instance("c")]
    weighted = LoadBalancer("weighted-round-robin")
    counts = collections.Counter(weighted.select_instance(seeded).id for _ in range(500))  # type: ignore[union-attr]
    assert counts == {"a": 300, "b": 100, "c": 100}
    with pytest.raises(ValueError, match=r'metadata\["weight"\]=\'heavy\' is not a number'):
        Instance("d", metadata={"weight": "heavy"})


def test_ip_hash_needs_a_client_and_a_bad_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="ip-hash picks by client_id"):
        LoadBalancer("ip-hash").select_instance(INSTANCES)
    with pytest.raises(ValueError, match="one of round-robin, random"):
        LoadBalancer("fastest")
