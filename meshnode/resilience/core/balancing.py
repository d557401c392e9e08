"""Load-balancing strategies (pure): each picks one endpoint among the candidates.

The candidates are the endpoints a request may use right now (healthy, not
ejected, with a free bulkhead slot); a strategy only chooses among them.
``Load`` tells a strategy what it may weigh: requests in flight and latency.
Randomness is injected, time is passed in.

- round-robin: each in turn.
- random: uniform.
- least-connections: the power of two choices on requests in flight (two at
  random, the less busy wins): near-optimal, no herd on one idle endpoint.
- weighted-round-robin: smooth WRR (as nginx): proportions exact over every
  window of sum(weights) picks, with the heavy endpoint's turns spread out.
- least-response-time: P2C on peak EWMA latency x (in flight + 1), as
  Finagle and linkerd2-proxy do; a sample above the average replaces it at
  once (peak), lower samples pull it down with a time constant, and a fast
  failure counts as slow (``FAILURE_PENALTY``) so a failing endpoint never
  looks fast.
- ip-hash: a consistent hash ring (virtual nodes), so adding or removing one
  of N endpoints moves about 1/N of the clients.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DECAY_SECONDS = 10.0  # the peak EWMA's time constant
FAILURE_PENALTY = 1.0  # seconds a fast failure counts as
VIRTUAL_NODES = 160  # ring points per endpoint: spreads keys within a few percent


class Load(Protocol):
    """What a strategy may weigh about an endpoint, by its key."""

    def in_flight(self, key: Any) -> int: ...

    def latency(self, key: Any) -> float | None: ...


class Strategy(Protocol):
    """``retry`` marks the pick of a retry, among the endpoints left once the failed one is
    set aside: it must not move a rotation, or round robin would skip an endpoint for
    good (the one after a dead endpoint would only ever be reached by retries)."""

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T: ...


class RoundRobinStrategy:
    def __init__(self) -> None:
        self._next = 0

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T:
        index = self._next
        if not retry:
            self._next = index + 1
        return candidates[index % len(candidates)]


class RandomStrategy:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T:
        return candidates[self._rng.randrange(len(candidates))]


class PowerOfTwoChoices:
    """Two candidates at random; the one with the lower ``cost`` wins (ties: the first)."""

    def __init__(self, rng: random.Random, cost: Callable[[Hashable, Load], float]) -> None:
        self._rng = rng
        self._cost = cost

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(range(len(candidates)), 2)
        a, b = candidates[first], candidates[second]
        return b if self._cost(key(b), load) < self._cost(key(a), load) else a


def in_flight_cost(name: Hashable, load: Load) -> float:
    """least-connections: requests in flight."""
    return load.in_flight(name)


def latency_cost(name: Hashable, load: Load) -> float:
    """least-response-time: peak EWMA latency x (requests in flight + 1); unmeasured: 0."""
    latency = load.latency(name)
    return 0.0 if latency is None else latency * (load.in_flight(name) + 1)


class WeightedRoundRobin:
    def __init__(self, weight: Callable[[object], int]) -> None:
        self._weight = weight
        self._current: dict[Hashable, float] = {}

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T:
        current = self._current
        total = 0
        best: T | None = None
        best_score = -math.inf
        for candidate in candidates:
            name = key(candidate)
            weight = max(1, self._weight(candidate))
            total += weight
            score = current.get(name, 0.0) + weight
            current[name] = score
            if score > best_score:
                best, best_score = candidate, score
        assert best is not None
        current[key(best)] -= total
        if len(current) > 4 * len(candidates):  # forget endpoints long gone
            names = {key(c) for c in candidates}
            self._current = {n: s for n, s in current.items() if n in names}
        return best


class ConsistentHash:
    """A ring of ``VIRTUAL_NODES`` points per endpoint; a client maps to the next point."""

    def __init__(self) -> None:
        self._members: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def pick(
        self,
        candidates: Sequence[T],
        key: Callable[[T], Hashable],
        load: Load,
        client: bytes | None,
        *,
        retry: bool = False,
    ) -> T:
        names = tuple(sorted(str(key(c)) for c in candidates))
        if names != self._members:
            self._build(names)
        owner = self._owners[bisect.bisect(self._points, _hash(client or b"")) % len(self._points)]
        return next(c for c in candidates if str(key(c)) == owner)

    def _build(self, names: tuple[str, ...]) -> None:
        ring = sorted(
            (_hash(f"{name}#{index}".encode()), name)
            for name in names
            for index in range(VIRTUAL_NODES)
        )
        self._members = names
        self._points = [point for point, _ in ring]
        self._owners = [name for _, name in ring]


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class PeakEWMA:
    """Peak-sensitive latency average: a slow sample counts at once, fast ones decay it."""

    __slots__ = ("stamp", "value")

    def __init__(self) -> None:
        self.value: float | None = None
        self.stamp = 0.0

    def observe(self, sample: float, now: float, *, failed: bool = False) -> None:
        if failed:
            sample = max(sample, FAILURE_PENALTY)
        if self.value is None or sample > self.value:
            self.value = sample
        else:
            weight = math.exp(-(now - self.stamp) / DECAY_SECONDS)
            self.value = self.value * weight + sample * (1 - weight)
        self.stamp = now


def make_strategy(name: str, rng: random.Random, weight: Callable[[object], int]) -> Strategy:
    factories: dict[str, Callable[[], Strategy]] = {
        "round-robin": RoundRobinStrategy,
        "random": lambda: RandomStrategy(rng),
        "least-connections": lambda: PowerOfTwoChoices(rng, in_flight_cost),
        "weighted-round-robin": lambda: WeightedRoundRobin(weight),
        "least-response-time": lambda: PowerOfTwoChoices(rng, latency_cost),
        "ip-hash": ConsistentHash,
    }
    factory = factories.get(name)
    if factory is None:
        raise ValueError(f"unknown balancing strategy {name!r}: one of {', '.join(factories)}")
    return factory()
