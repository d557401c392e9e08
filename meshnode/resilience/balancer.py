"""``LoadBalancer``: the seed's load balancer for any Python program, on the node's strategies.

    balancer = LoadBalancer("least-connections", max_connections_per_instance=100)
    instance = balancer.select_instance(instances, client_id="client-1")
    balancer.on_connection_start(instance.id)
    try:
        ...  # call it
    finally:
        balancer.on_connection_end(instance.id, latency=0.012)

Strategies are the node's (``meshnode.resilience.core.balancing``): round-robin,
random, least-connections, weighted-round-robin, least-response-time, ip-hash
(here: a hash of ``client_id``, which it then needs). Weighted round robin weighs
``Instance.weight``, or ``metadata["weight"]`` as the seed writes it. Session affinity,
the seed's ``sessionAffinity: true`` and off unless asked for, sticks a ``client_id`` to
the instance it first got, for ``session_ttl``, while that instance is offered and has room.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from meshnode.resilience.core.balancing import PeakEWMA, make_strategy
from meshnode.resilience.core.outlier import SessionTable
from meshnode.resilience.core.picking import pick
from meshnode.resilience.durations import DurationLike, seconds

SESSION_TTL_LIMIT = 7 * 86400.0  # sessions may last days; a bare number above a week is ms


@attrs.frozen
class Instance:
    id: str
    address: str = ""
    weight: int | None = None  # None: metadata["weight"] if there is one, else 1
    metadata: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.effective_weight  # noqa: B018 - a bad weight fails here, not at a pick

    @property
    def effective_weight(self) -> int:
        if self.weight is not None:
            weight, source = self.weight, "weight"
        else:
            text = self.metadata.get("weight", "1")
            source = f'metadata["weight"]={text!r}'
            try:
                weight = int(text)
            except ValueError:
                raise ValueError(f"instance {self.id!r}: {source} is not a number") from None
        if weight < 1:
            raise ValueError(f"instance {self.id!r}: {source} must be at least 1")
        return weight


@attrs.define
class _Figures:
    active: int = 0
    total: int = 0
    failures: int = 0
    latency: PeakEWMA = attrs.field(factory=PeakEWMA)


class LoadBalancer:
    def __init__(
        self,
        strategy: str = "round-robin",
        *,
        max_connections_per_instance: int | None = None,
        session_affinity: bool = False,
        session_ttl: DurationLike = 1800.0,
        max_sessions: int = 100_000,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.strategy_name = strategy
        self._strategy = make_strategy(strategy, rng or random.Random(), _weight)
        self._limit = max_connections_per_instance
        ttl = seconds(session_ttl, "session_ttl", limit=SESSION_TTL_LIMIT)
        self._sessions = SessionTable(ttl, max_sessions) if session_affinity else None
        self._figures: dict[str, _Figures] = {}
        self._clock = clock

    def select_instance(
        self, instances: Sequence[Instance], client_id: str | None = None
    ) -> Instance | None:
        """An instance with room, chosen by the strategy (or the client's session); None if none."""
        if client_id is None and self.strategy_name == "ip-hash":
            raise ValueError("ip-hash picks by client_id: pass the caller's address or key")
        client = client_id.encode() if client_id is not None else None
        return pick(
            instances,
            _instance_id,
            self,
            self._strategy,
            now=self._clock(),
            limit=self._limit,
            sessions=self._sessions,
            session=client,
            client=client,
        )

    def clear_session(self, client_id: str) -> bool:
        return self._sessions is not None and self._sessions.forget(client_id.encode()) == 1

    def on_connection_start(self, instance_id: str) -> None:
        figures = self._figures.setdefault(instance_id, _Figures())
        figures.active += 1
        figures.total += 1

    def on_connection_end(
        self, instance_id: str, *, latency: float | None = None, failed: bool = False
    ) -> None:
        figures = self._figures.setdefault(instance_id, _Figures())
        figures.active = max(0, figures.active - 1)
        figures.failures += failed
        if latency is not None:
            figures.latency.observe(latency, self._clock(), failed=failed)

    def metrics(self) -> dict[str, Any]:
        """The seed's shape: per instance its load, and the strategy."""
        return {
            "strategy": self.strategy_name,
            "sessions": len(self._sessions) if self._sessions is not None else 0,
            "instances": {
                name: {
                    "active_connections": f.active,
                    "total_requests": f.total,
                    "failures": f.failures,
                    "latency_ms": None if f.latency.value is None else f.latency.value * 1000,
                }
                for name, f in self._figures.items()
            },
        }

    # the Load view the strategies weigh
    def in_flight(self, key: Any) -> int:
        figures = self._figures.get(key)
        return figures.active if figures is not None else 0

    def latency(self, key: Any) -> float | None:
        figures = self._figures.get(key)
        return figures.latency.value if figures is not None else None


def _instance_id(instance: Instance) -> str:
    return instance.id


def _weight(instance: object) -> int:
    return instance.effective_weight if isinstance(instance, Instance) else 1
