"""Balancing strategies, outlier ejection and sessions, as pure properties."""

from __future__ import annotations

import collections
import random

import attrs
import pytest

from meshnode.resilience.core.balancing import (
    FAILURE_PENALTY,
    ConsistentHash,
    PeakEWMA,
    PowerOfTwoChoices,
    RandomStrategy,
    RoundRobinStrategy,
    WeightedRoundRobin,
    in_flight_cost,
    latency_cost,
)
from meshnode.resilience.core.outlier import OutlierDetector, SessionTable


@attrs.frozen
class Host:
    name: str
    weight: int = 1


@attrs.define
class FakeLoad:
    in_flight_of: dict[str, int] = attrs.field(factory=dict)
    latency_of: dict[str, float] = attrs.field(factory=dict)

    def in_flight(self, key: str) -> int:
        return self.in_flight_of.get(key, 0)

    def latency(self, key: str) -> float | None:
        return self.latency_of.get(key)


HOSTS = [Host("a"), Host("b"), Host("c"), Host("d")]


def name(host: Host) -> str:
    return host.name


def spread(strategy, hosts, picks: int, load=None, client=lambda n: None) -> collections.Counter:
    load = load or FakeLoad()
    return collections.Counter(
        strategy.pick(hosts, name, load, client(n)).name for n in range(picks)
    )


def test_round_robin_is_even() -> None:
    assert set(spread(RoundRobinStrategy(), HOSTS, 1000).values()) == {250}


def test_round_robin_keeps_turning_when_a_retry_picks_from_fewer() -> None:
    """A dead endpoint b: each request that lands on it is retried among the others. The next
    request must not land on b again (it did every time while the turn restarted from the
    retry's shorter list), and the retries must not move the turn (c, after b, would only
    ever be reached by retries): every endpoint gets its third of first tries."""
    strategy, load = RoundRobinStrategy(), FakeLoad()
    hosts = HOSTS[:3]
    first_tries = []
    for _ in range(30):
        chosen = strategy.pick(hosts, name, load, None)
        first_tries.append(chosen.name)
        if chosen.name == "b":
            strategy.pick([h for h in hosts if h.name != "b"], name, load, None, retry=True)
    assert collections.Counter(first_tries) == {"a": 10, "b": 10, "c": 10}


def test_random_is_roughly_even() -> None:
    counts = spread(RandomStrategy(random.Random(3)), HOSTS, 10_000)
    assert all(2300 < count < 2700 for count in counts.values())


def test_weighted_round_robin_is_exact_and_smooth() -> None:
    hosts = [Host("a", 5), Host("b", 1), Host("c", 1)]
    strategy = WeightedRoundRobin(lambda host: host.weight)
    picks = [strategy.pick(hosts, name, FakeLoad(), None).name for _ in range(7000)]
    assert collections.Counter(picks) == {"a": 5000, "b": 1000, "c": 1000}
    assert picks[:7] == ["a", "a", "b", "a", "c", "a", "a"]  # b and c are spread out


def test_least_connections_avoids_the_busy_endpoint() -> None:
    load = FakeLoad(in_flight_of={"a": 50})
    counts = spread(PowerOfTwoChoices(random.Random(1), in_flight_cost), HOSTS, 4000, load)
    assert counts["a"] < 0.05 * 4000


def test_least_response_time_prefers_the_fast_and_penalises_fast_failures() -> None:
    load = FakeLoad(latency_of={"a": 0.5, "b": 0.01, "c": 0.01, "d": 0.01})
    counts = spread(PowerOfTwoChoices(random.Random(2), latency_cost), HOSTS, 4000, load)
    assert counts["a"] < 0.05 * 4000
    ewma = PeakEWMA()
    ewma.observe(0.001, now=0.0, failed=True)  # a 1 ms 503 is not a fast endpoint
    assert ewma.value == FAILURE_PENALTY


def test_peak_ewma_rises_at_once_and_decays_slowly() -> None:
    ewma = PeakEWMA()
    ewma.observe(0.010, now=0.0)
    ewma.observe(0.500, now=1.0)
    assert ewma.value == 0.5
    ewma.observe(0.010, now=2.0)
    assert 0.4 < (ewma.value or 0) < 0.5
    for second in range(3, 100):
        ewma.observe(0.010, now=float(second))
    assert (ewma.value or 1) < 0.02


@pytest.mark.parametrize("size", [3, 5, 10])
def test_consistent_hash_moves_about_one_nth_of_clients(size: int) -> None:
    hosts = [Host(f"10.0.0.{n}:80") for n in range(size)]
    clients = [f"client-{n}".encode() for n in range(10_000)]
    before = ConsistentHash()
    placed = {c: before.pick(hosts, name, FakeLoad(), c).name for c in clients}
    after = ConsistentHash()
    removed = hosts[1:]
    moved = sum(after.pick(removed, name, FakeLoad(), c).name != placed[c] for c in clients)
    assert moved <= 1.5 * len(clients) / size
    stayed = [c for c in clients if placed[c] != hosts[0].name]
    assert all(after.pick(removed, name, FakeLoad(), c).name == placed[c] for c in stayed)


def test_ejection_grows_and_is_capped() -> None:
    detector = OutlierDetector(3, 10.0, 25.0, 50.0, random.Random(0))
    durations = []
    for round_ in range(4):
        now = round_ * 100.0
        assert detector.record("a", failed=True, now=now, endpoints=4) is None
        assert detector.record("a", failed=True, now=now, endpoints=4) is None
        durations.append(detector.record("a", failed=True, now=now, endpoints=4) or 0.0)
    expected = [10.0, 20.0, 25.0, 25.0]  # base x ejections, capped; +-10 % jitter
    assert all(e * 0.9 <= d <= e * 1.1 for d, e in zip(durations, expected, strict=True))
    assert detector.ejections("a") == 4
    detector.record("a", failed=False, now=500.0, endpoints=4)  # clean long enough: forgiven
    assert detector.ejections("a") == 0


def test_max_ejection_percent_but_one_can_always_go() -> None:
    detector = OutlierDetector(1, 10.0, 60.0, 10.0, random.Random(0))
    assert detector.record("a", failed=True, now=0.0, endpoints=3) is not None  # 10 % of 3: 1
    assert detector.record("b", failed=True, now=0.0, endpoints=3) is None
    assert detector.ejected("a", 5.0) and not detector.ejected("a", 12.0)


def test_any_ejected_holds_until_the_last_ejection_ends() -> None:
    detector = OutlierDetector(1, 10.0, 60.0, 100.0, random.Random(0))
    assert not detector.any_ejected(0.0)
    first = detector.record("a", failed=True, now=0.0, endpoints=2) or 0.0
    second = detector.record("b", failed=True, now=5.0, endpoints=2) or 0.0
    assert first and second  # both ejected, "b" until later than "a"
    assert detector.any_ejected(first + 1)  # "a" is back, "b" is not
    assert detector.any_ejected(5.0 + second - 0.01)
    assert not detector.any_ejected(5.0 + second)


def test_sessions_stick_expire_and_are_bounded() -> None:
    table = SessionTable(ttl=60, max_sessions=2)
    table.stick(b"alice", "a", now=0)
    assert table.get(b"alice", now=59) == "a"
    assert table.get(b"alice", now=61) is None
    for client in (b"x", b"y", b"z"):
        table.stick(client, "b", now=100)
    assert len(table) == 2 and table.get(b"x", now=100) is None
    assert table.forget(b"y") == 1 and table.forget(b"y") == 0
