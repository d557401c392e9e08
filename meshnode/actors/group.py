"""Theory of operation: an upstream's actor group, and the face it shows the request path.

Five actors run under one supervisor, each the only owner of its state and
each fed by its own bounded channel:

    discovery watcher --EndpointsReset--> balancer --> EndpointSet snapshot
    health prober     probes the endpoints, and tells the balancer which are healthy
    breaker           owns the breaker state machine: its timer, reloads, operator overrides
    replayer          replays the queue fallback's stored requests once the upstream is back

The request path never waits on an actor. It reads the snapshots published on
this object (``endpoints``, ``policy``), takes an endpoint slot (``acquire``,
the bulkhead) and gives it back with the outcome (``release``). The breaker's
admission and outcome recording are synchronous calls into its sans-IO core:
strict half-open admission under concurrency cannot wait for a channel round
trip, and in Trio's single thread a synchronous call is exactly an actor that
answers at once. A reload hands the group a new policy (``update_policy``):
requests that start afterwards use it, every actor is told, and state that the
change does not concern (breaker state, budgets, buckets, caches, latency
averages) carries on.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from meshnode.actors.actors import Actor, Balancer, Breaker, DiscoveryWatcher, HealthProber
from meshnode.actors.messages import CrashForTest, PolicyChanged
from meshnode.actors.probes import Probe
from meshnode.actors.protections import Protections
from meshnode.actors.replay import Deliverer, Replayer
from meshnode.actors.snapshots import EndpointSet
from meshnode.actors.stats import UpstreamStats
from meshnode.actors.supervisor import RestartPolicy, Supervisor
from meshnode.errors import BulkheadFull, NoHealthyEndpoints
from meshnode.events import EndpointHealthChanged, EventBus
from meshnode.net.pool import UpstreamConnections, upstream_connections
from meshnode.net.pulse import Pulse
from meshnode.policy.models import Endpoint, UpstreamPolicy, UpstreamSection
from meshnode.policy.units import Address
from meshnode.resilience.core.balancing import PeakEWMA, Strategy, make_strategy
from meshnode.resilience.core.outlier import OutlierDetector, SessionTable
from meshnode.resilience.spool import AsyncSpool

log = logging.getLogger(__name__)


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


class UpstreamGroup:
    def __init__(
        self,
        policy: UpstreamPolicy,
        bus: EventBus,
        restart: RestartPolicy = RestartPolicy(),
        probe: Probe | None = None,
        queue: AsyncSpool | None = None,
        deliverer: Deliverer | None = None,
    ) -> None:
        self.policy = policy
        self.probe = probe  # how the prober reaches an endpoint (the node's pool)
        self.queue = queue  # the durable spool, for a queue fallback
        self.deliverer = deliverer  # how the replay actor sends a queued request
        self.bus = bus
        self.endpoints = EndpointSet(())
        self.supervisor = Supervisor(policy.name, bus, restart)
        self.supervising = False  # the supervisor's task is running (liveness)
        self.protections = Protections(policy)
        self.balancing = Balancing(policy, self.protections.rng)
        self.health: dict[Address, bool] = {}  # from active checks; absent means healthy
        self.load: dict[Address, EndpointLoad] = {}
        self._load_view = _LoadView(self.load)
        self.in_flight = 0
        self.pending = 0
        self.stats = UpstreamStats()
        # How its connections are made, for the [upstream] section and trust domain it was
        # made for: built once per policy, not per request.
        self._connections: tuple[UpstreamSection, str, UpstreamConnections] | None = None
        self._drained = Pulse()  # the last request in flight ended
        self._slot_freed = Pulse()  # a request ended: a bulkhead slot may be free
        self._first_snapshot = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self.balancer = Balancer(self)
        self.breaker = Breaker(self)
        self.discovery = DiscoveryWatcher(self)
        self.prober = HealthProber(self)
        self.replayer = Replayer(self)
        self.actors: Sequence[Actor] = (
            self.discovery,
            self.prober,
            self.breaker,
            self.balancer,
            self.replayer,
        )

    @property
    def name(self) -> str:
        return self.policy.name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until ``stop``; "started" once the first endpoint set is published."""
        self.supervising = True
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    for actor in self.actors:
                        nursery.start_soon(self.supervisor.supervise, actor.name, actor.run)
                    await self._first_snapshot.wait()
                    task_status.started()
        finally:
            self.supervising = False

    def stop(self) -> None:
        self._cancel_scope.cancel()

    # -- published by actors -------------------------------------------------

    @property
    def has_endpoints(self) -> bool:
        """Whether a first endpoint set was published (the group serves from then on)."""
        return self._first_snapshot.is_set()

    def publish_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = EndpointSet(endpoints, self.endpoints.version + 1)
        for endpoint in endpoints:
            if endpoint.address not in self.load:
                self.load[endpoint.address] = EndpointLoad(endpoint.address)
        self._first_snapshot.set()
        self._slot_freed.fire()

    # -- the request path: endpoints and the bulkhead ----------------------------

    async def acquire(
        self,
        avoid: Address | None = None,
        client: bytes | None = None,
        session: bytes | None = None,
    ) -> tuple[Endpoint, EndpointLoad]:
        """An endpoint for one try: usable, with a free slot, chosen by the strategy.

        ``avoid`` is the endpoint a retry should not go back to if it can help
        it; ``client`` feeds ip-hash; ``session`` is the affinity key. When every
        usable endpoint is at ``max_connections_per_instance`` (the bulkhead),
        up to ``max_pending`` requests wait ``queue_timeout`` for a slot; others
        get ``bulkhead-full`` at once.
        """
        endpoint = self._choose(avoid, client, session)
        if endpoint is None:
            balancer = self.policy.balancer
            if self.pending >= balancer.max_pending:
                self.stats.rejected["bulkhead-full"] += 1
                raise BulkheadFull(
                    f"every endpoint is at {balancer.max_connections_per_instance} requests "
                    f"and {self.pending} are waiting",
                    self.name,
                )
            self.pending += 1
            try:
                with trio.move_on_after(balancer.queue_timeout):
                    while endpoint is None:
                        await self._slot_freed.wait()
                        endpoint = self._choose(avoid, client, session)
            finally:
                self.pending -= 1
            if endpoint is None:
                self.stats.rejected["bulkhead-full"] += 1
                raise BulkheadFull(
                    f"no endpoint slot came free within {balancer.queue_timeout:g}s", self.name
                )
        load = self.load.get(endpoint.address)
        if load is None:
            load = self.load[endpoint.address] = EndpointLoad(endpoint.address)
        load.in_flight += 1
        self.in_flight += 1
        return endpoint, load

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
        self, avoid: Address | None, client: bytes | None, session: bytes | None
    ) -> Endpoint | None:
        if not self.endpoints.endpoints:
            raise NoHealthyEndpoints("no endpoint is available", self.name)
        now = trio.current_time()
        usable = self.usable(now)
        if not usable:
            raise NoHealthyEndpoints("every endpoint is unhealthy or ejected", self.name)
        limit = self.policy.balancer.max_connections_per_instance
        load = self.load
        free = [
            e for e in usable if (held := load.get(e.address)) is None or held.in_flight < limit
        ]
        if not free:
            return None
        if avoid is not None and len(free) > 1:
            free = [e for e in free if e.address != avoid] or free
        sessions = self.balancing.sessions
        if sessions is not None and session is not None:
            sticky = sessions.get(session, now)
            for endpoint in free:
                if endpoint.address == sticky:
                    return endpoint
        chosen = self.balancing.strategy.pick(
            free, _address, self._load_view, client, retry=avoid is not None
        )
        if sessions is not None and session is not None:
            sessions.stick(session, chosen.address, now)
        return chosen

    def release(self, load: EndpointLoad, latency: float, *, failed: bool = False) -> None:
        """The try on ``load``'s endpoint ended; its outcome feeds latency and ejection."""
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
                self._announce_health(
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

    def set_health(self, address: Address, healthy: bool, reason: str) -> None:
        """From the health prober: an endpoint passed its threshold one way or the other."""
        if self.health.get(address, True) == healthy:
            return
        self.health[address] = healthy
        self._announce_health(
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

    def forget_sessions(self, client: bytes) -> int:
        sessions = self.balancing.sessions
        return 0 if sessions is None else sessions.forget(client)

    def _announce_health(self, address: Address, previous: str, current: str, reason: str) -> None:
        log.info(
            "upstream %s endpoint %s: %s -> %s (%s)", self.name, address, previous, current, reason
        )
        self.bus.publish(
            EndpointHealthChanged(
                upstream=self.name, endpoint=str(address), from_=previous, to=current, reason=reason
            )
        )

    def connections(self, trust_domain: str) -> UpstreamConnections:
        """How this upstream's connections are made and kept, as its policy says now."""
        section = self.policy.upstream
        made = self._connections
        if made is None or made[0] is not section or made[1] != trust_domain:
            built = upstream_connections(section, trust_domain, self.stats.goaways)
            made = self._connections = (section, trust_domain, built)
        return made[2]

    # -- reload and operations -----------------------------------------------

    async def update_policy(self, policy: UpstreamPolicy) -> None:
        self.policy = policy
        self.protections = Protections(policy, self.protections)
        self.balancing = Balancing(policy, self.protections.rng, self.balancing)
        change = PolicyChanged(policy)
        for actor in self.actors:
            await actor.inbox_send.send(change)
        self._slot_freed.fire()  # a larger bulkhead may free waiting requests

    async def drain(self, timeout: float) -> bool:
        """Wait until no request of this upstream is in flight; False if ``timeout`` passed."""
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            while self.in_flight:
                await self._drained.wait()
            return True
        return False

    def inject_fault(self, actor_name: str) -> None:
        """Test-only fault hook: make one actor raise, to exercise supervision."""
        actor = next(actor for actor in self.actors if actor.name == actor_name)
        actor.inbox_send.send_nowait(CrashForTest())

    @property
    def failed(self) -> bool:
        return self.supervisor.failed

    def report(self) -> dict[str, Any]:
        """What ``/admin/upstreams`` shows for this upstream."""
        stats = self.stats
        return {
            "strategy": self.policy.balancer.strategy,
            "sessions": len(self.balancing.sessions) if self.balancing.sessions is not None else 0,
            "discovery": self.discovery.state.to_json(),
            "failed": self.failed,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "actor_restarts": dict(self.supervisor.restarts),
            "breaker": self.breaker.report(),
            "requests": {str(code): count for code, count in sorted(stats.requests.items())},
            "retries": dict(stats.retries),
            "tries": dict(stats.tries),
            "rate_limited": stats.rate_limited,
            "rejected": {**stats.rejected, "circuit-open": stats.breaker_rejected},
            "fallbacks": dict(stats.fallbacks),
            "goaways": stats.goaways.count,
            "resent": dict(stats.resent),
            "endpoints": [self._endpoint_report(endpoint) for endpoint in self.endpoints.endpoints],
        }

    def _endpoint_report(self, endpoint: Endpoint) -> dict[str, Any]:
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
