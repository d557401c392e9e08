"""Endpoint picking: the request path's side of an upstream's endpoints.

The balancer actor publishes the endpoint set here, the health prober the health of
each endpoint; the request path reads both without waiting. For each try it takes an
endpoint with a free slot (``acquire``: healthy and not ejected, or all of them in
panic, then room, stickiness and strategy as ``resilience/core/picking.py`` decides, the
library's ``LoadBalancer`` alike) and gives it back with the outcome (``release``),
which feeds the endpoint's latency and outlier detection. When every usable endpoint is
full, a bounded number of requests wait for a slot (the bulkhead). The request path is
the only writer of the per-endpoint figures (``EndpointLoad``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from meshnode.actors.snapshots import EndpointSet
from meshnode.actors.stats import UpstreamStats
from meshnode.errors import BulkheadFull, NoHealthyEndpoints
from meshnode.net.pulse import Pulse
from meshnode.policy.models import Endpoint, UpstreamPolicy
from meshnode.policy.units import Address
from meshnode.resilience.core.balancing import PeakEWMA, Strategy, make_strategy
from meshnode.resilience.core.outlier import OutlierDetector, SessionTable
from meshnode.resilience.core.picking import pick

HealthAnnouncer = Callable[[Address, str, str, str], None]
"""Told (address, from, to, reason) when an endpoint's health or ejection changes."""


def _address(endpoint: Endpoint) -> Address:
    return endpoint.address


@attrs.define
class EndpointLoad:
    """Per-endpoint figures kept by the request path itself (it is their only writer)."""

    address: Address
    in_flight: int = 0
    latency: PeakEWMA = attrs.field(factory=PeakEWMA)
    tries: int = 0
    failures: int = 0  # tries that failed (connect, reset, timeout, 5xx)


class _LoadView:
    """What the balancing strategies may weigh, read from the group's endpoint loads."""

    __slots__ = ("_loads",)

    def __init__(self, loads: dict[Address, EndpointLoad]) -> None:
        self._loads = loads

    def in_flight(self, key: Address) -> int:
        load = self._loads.get(key)
        return load.in_flight if load is not None else 0

    def latency(self, key: Address) -> float | None:
        load = self._loads.get(key)
        return load.latency.value if load is not None else None


class Balancing:
    """The strategy, sessions and outlier records an upstream's policy asks for.

    A reload rebuilds only what changed: the same strategy keeps its position
    and weights, the same affinity its sessions, the same detection its records.
    """

    def __init__(
        self, policy: UpstreamPolicy, rng: random.Random, previous: Balancing | None = None
    ) -> None:
        balancer = policy.balancer
        self.strategy_name = balancer.strategy
        self.affinity = balancer.session_affinity
        self.detection = policy.outlier_detection
        self.strategy: Strategy
        self.sessions: SessionTable | None
        self.outliers: OutlierDetector | None
        if previous is not None and previous.strategy_name == self.strategy_name:
            self.strategy = previous.strategy
        else:
            self.strategy = make_strategy(self.strategy_name, rng, _weight)
        if previous is not None and previous.affinity == self.affinity:
            self.sessions = previous.sessions
        elif self.affinity is None:
            self.sessions = None
        else:
            self.sessions = SessionTable(self.affinity.ttl, self.affinity.max_sessions)
        detection = self.detection
        if previous is not None and previous.detection == detection:
            self.outliers = previous.outliers
        elif detection is None:
            self.outliers = None
        else:
            self.outliers = OutlierDetector(
                detection.consecutive_failures,
                detection.base_ejection_time,
                detection.max_ejection_time,
                detection.max_ejection_percent,
                rng,
            )


def _weight(endpoint: object) -> int:
    return endpoint.weight if isinstance(endpoint, Endpoint) else 1


class EndpointPicker:
    """An upstream's endpoints as the request path sees them: the published set, their
    health and load, the bulkhead, and the pick."""

    def __init__(
        self,
        policy: UpstreamPolicy,
        rng: random.Random,
        stats: UpstreamStats,
        announce: HealthAnnouncer,
    ) -> None:
        self.policy = policy
        self.endpoints = EndpointSet(())
        self.balancing = Balancing(policy, rng)
        self.health: dict[Address, bool] = {}  # from active checks; absent means healthy
        self.load: dict[Address, EndpointLoad] = {}
        self._load_view = _LoadView(self.load)
        self.in_flight = 0
        self.pending = 0
        self._stats = stats
        self._announce = announce
        self._drained = Pulse()  # the last request in flight ended
        self._slot_freed = Pulse()  # a request ended: a bulkhead slot may be free
        self._first_set = trio.Event()

    @property
    def name(self) -> str:
        return self.policy.name

    def update(self, policy: UpstreamPolicy, rng: random.Random) -> None:
        """A reload: what changed is rebuilt, the rest carries on (``Balancing``)."""
        self.policy = policy
        self.balancing = Balancing(policy, rng, self.balancing)
        self._slot_freed.fire()  # a larger bulkhead may free waiting requests

    # -- published by actors -------------------------------------------------

    @property
    def has_endpoints(self) -> bool:
        """Whether a first endpoint set was published (the upstream serves from then on)."""
        return self._first_set.is_set()

    async def first_set(self) -> None:
        await self._first_set.wait()

    def publish(self, endpoints: tuple[Endpoint, ...]) -> None:
        """From the balancer: the endpoint set requests may go to from now on."""
        self.endpoints = EndpointSet(endpoints, self.endpoints.version + 1)
        for endpoint in endpoints:
            if endpoint.address not in self.load:
                self.load[endpoint.address] = EndpointLoad(endpoint.address)
        self._first_set.set()
        self._slot_freed.fire()

    def set_health(self, address: Address, healthy: bool, reason: str) -> None:
        """From the health prober: an endpoint passed its threshold one way or the other."""
        if self.health.get(address, True) == healthy:
            return
        self.health[address] = healthy
        self._announce(
            address,
            "unhealthy" if healthy else "healthy",
            "healthy" if healthy else "unhealthy",
            reason,
        )
        self._slot_freed.fire()

    def endpoint_states(self) -> dict[str, int]:
        """How many endpoints are healthy, unhealthy (active checks) and ejected (outliers)."""
        now = trio.current_time()
        outliers = self.balancing.outliers
        states = {"healthy": 0, "unhealthy": 0, "ejected": 0}
        for endpoint in self.endpoints.endpoints:
            if not self.health.get(endpoint.address, True):
                states["unhealthy"] += 1
            elif outliers is not None and outliers.ejected(endpoint.address, now):
                states["ejected"] += 1
            else:
                states["healthy"] += 1
        return states

    # -- the request path: endpoints and the bulkhead ----------------------------

    def take(
        self,
        avoid: Address | None = None,
        client: bytes | None = None,
        session: bytes | None = None,
        now: float | None = None,
    ) -> tuple[Endpoint, EndpointLoad] | None:
        """An endpoint for one try and its slot, if one is free now (None when every
        usable endpoint is at ``max_connections_per_instance``): the common case, with no
        coroutine and no wait. ``now``: the time the caller has read already.

        ``avoid`` is the endpoint a retry should not go back to if it can help
        it; ``client`` feeds ip-hash; ``session`` is the affinity key.
        """
        endpoint = self._choose(avoid, client, session, now)
        return None if endpoint is None else (endpoint, self._take(endpoint))

    async def acquire(
        self,
        avoid: Address | None = None,
        client: bytes | None = None,
        session: bytes | None = None,
    ) -> tuple[Endpoint, EndpointLoad]:
        """An endpoint for one try, as ``take`` finds one, waiting for a slot when there
        is none: when every usable endpoint is full (the bulkhead), up to ``max_pending``
        requests wait ``queue_timeout`` for a slot; others get ``bulkhead-full`` at once.
        """
        taken = self.take(avoid, client, session)
        if taken is not None:
            return taken
        balancer = self.policy.balancer
        if self.pending >= balancer.max_pending:
            self._stats.rejected["bulkhead-full"] += 1
            raise BulkheadFull(
                f"every endpoint is at {balancer.max_connections_per_instance} requests "
                f"and {self.pending} are waiting",
                self.name,
            )
        self.pending += 1
        try:
            with trio.move_on_after(balancer.queue_timeout):
                while taken is None:
                    await self._slot_freed.wait()
                    taken = self.take(avoid, client, session)
        finally:
            self.pending -= 1
        if taken is None:
            self._stats.rejected["bulkhead-full"] += 1
            raise BulkheadFull(
                f"no endpoint slot came free within {balancer.queue_timeout:g}s", self.name
            )
        return taken

    def acquire_now(
        self, avoid: Address | None = None, client: bytes | None = None
    ) -> tuple[Endpoint, EndpointLoad] | None:
        """An endpoint for an extra try (a hedge), preferably not ``avoid``: None rather
        than a wait when every usable endpoint is full or none is usable. No session
        affinity: a hedge goes elsewhere on purpose."""
        try:
            return self.take(avoid, client)
        except NoHealthyEndpoints:
            return None

    def _take(self, endpoint: Endpoint) -> EndpointLoad:
        """A slot on ``endpoint``: counted in flight until released."""
        load = self.load.get(endpoint.address)
        if load is None:
            load = self.load[endpoint.address] = EndpointLoad(endpoint.address)
        load.in_flight += 1
        self.in_flight += 1
        return load

    def usable(self, now: float) -> Sequence[Endpoint]:
        """Healthy and not ejected; all of them in panic (too few usable), as Envoy does."""
        endpoints = self.endpoints.endpoints
        health = self.health
        outliers = self.balancing.outliers
        if all(health.values()) and (outliers is None or not outliers.any_ejected(now)):
            return endpoints  # none is down: the common case needs no list
        usable = [
            e
            for e in endpoints
            if health.get(e.address, True)
            and (outliers is None or not outliers.ejected(e.address, now))
        ]
        threshold = self.policy.balancer.panic_threshold
        if threshold and len(usable) * 100 < len(endpoints) * threshold:
            return endpoints
        return usable

    def _choose(
        self,
        avoid: Address | None,
        client: bytes | None,
        session: bytes | None,
        now: float | None = None,
    ) -> Endpoint | None:
        if not self.endpoints.endpoints:
            raise NoHealthyEndpoints("no endpoint is available", self.name)
        if now is None:
            now = trio.current_time()
        usable = self.usable(now)
        if not usable:
            raise NoHealthyEndpoints("every endpoint is unhealthy or ejected", self.name)
        balancing = self.balancing
        return pick(
            usable,
            _address,
            self._load_view,
            balancing.strategy,
            now=now,
            limit=self.policy.balancer.max_connections_per_instance,
            sessions=balancing.sessions,
            session=session,
            client=client,
            avoid=avoid,
        )

    def release(
        self, load: EndpointLoad, latency: float, *, failed: bool = False, now: float | None = None
    ) -> None:
        """The try on ``load``'s endpoint ended; its outcome feeds latency and ejection.
        ``now``: the time the caller read as the try ended."""
        if now is None:
            now = trio.current_time()
        self.release_unjudged(load)
        load.tries += 1
        load.failures += failed
        load.latency.observe(latency, now, failed=failed)
        outliers = self.balancing.outliers
        if outliers is not None:
            ejected_for = outliers.record(
                load.address, failed=failed, now=now, endpoints=len(self.endpoints.endpoints)
            )
            if ejected_for is not None:
                self._announce(
                    load.address,
                    "healthy",
                    "ejected",
                    f"{ejected_for:.0f}s after repeated failures",
                )

    def release_unjudged(self, load: EndpointLoad) -> None:
        """Free the slot of a try that says nothing of the endpoint: the upstream left it
        unanswered as it recycled a connection, and the request is sent again."""
        load.in_flight -= 1
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.fire()
        self._slot_freed.fire()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight here; False if ``timeout`` passed first."""
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            while self.in_flight:
                await self._drained.wait()
            return True
        return False

    def forget_sessions(self, client: bytes) -> int:
        sessions = self.balancing.sessions
        return 0 if sessions is None else sessions.forget(client)

    def endpoint_report(self, endpoint: Endpoint) -> dict[str, Any]:
        load = self.load.get(endpoint.address) or EndpointLoad(endpoint.address)
        outliers = self.balancing.outliers
        now = trio.current_time()
        latency = load.latency.value
        return {
            "address": str(endpoint.address),
            "weight": endpoint.weight,
            "zone": endpoint.zone,
            "health": "healthy" if self.health.get(endpoint.address, True) else "unhealthy",
            "ejected": outliers is not None and outliers.ejected(endpoint.address, now),
            "ejections": outliers.ejections(endpoint.address) if outliers is not None else 0,
            "in_flight": load.in_flight,
            "tries": load.tries,
            "failures": load.failures,
            "ewma_latency_ms": None if latency is None else round(latency * 1000, 3),
        }
