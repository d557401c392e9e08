"""Theory of operation: an upstream's actor group, and the face it shows the request path.

Four actors run under one supervisor, each the only owner of its state and
each fed by its own bounded channel:

    discovery watcher --EndpointsReset/Added/Removed--> balancer --> EndpointSet snapshot
    health prober     (probing arrives with the health issue)
    breaker           owns the breaker state machine: its timer, reloads, operator overrides

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

import math
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from meshnode.actors.actors import Actor, Balancer, Breaker, DiscoveryWatcher, HealthProber
from meshnode.actors.messages import CrashForTest, PolicyChanged
from meshnode.actors.protections import Protections
from meshnode.actors.snapshots import EndpointSet
from meshnode.actors.stats import UpstreamStats
from meshnode.actors.supervisor import RestartPolicy, Supervisor
from meshnode.errors import BulkheadFull, NoHealthyEndpoints
from meshnode.events import EventBus
from meshnode.policy.models import Endpoint, UpstreamPolicy
from meshnode.policy.units import Address
from meshnode.resilience.balancer import RoundRobin

EWMA_WEIGHT = 0.2


@attrs.define
class EndpointLoad:
    """Per-endpoint figures kept by the request path itself (it is their only writer)."""

    in_flight: int = 0
    ewma_latency: float | None = None


class UpstreamGroup:
    def __init__(
        self, policy: UpstreamPolicy, bus: EventBus, restart: RestartPolicy = RestartPolicy()
    ) -> None:
        self.policy = policy
        self.bus = bus
        self.endpoints = EndpointSet(())
        self.supervisor = Supervisor(policy.name, bus, restart)
        self.protections = Protections(policy)
        self.load: dict[Address, EndpointLoad] = {}
        self.in_flight = 0
        self.pending = 0
        self.stats = UpstreamStats()
        self._drained = trio.Event()
        self._slot_freed = trio.Event()
        self._picker: RoundRobin[Endpoint] = RoundRobin()
        self._first_snapshot = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self.balancer = Balancer(self)
        self.breaker = Breaker(self)
        self.discovery = DiscoveryWatcher(self)
        self.prober = HealthProber(self)
        self.actors: Sequence[Actor] = (self.discovery, self.prober, self.breaker, self.balancer)

    @property
    def name(self) -> str:
        return self.policy.name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until ``stop``; "started" once the first endpoint set is published."""
        with self._cancel_scope:
            async with trio.open_nursery() as nursery:
                for actor in self.actors:
                    nursery.start_soon(self.supervisor.supervise, actor.name, actor.run)
                await self._first_snapshot.wait()
                task_status.started()

    def stop(self) -> None:
        self._cancel_scope.cancel()

    # -- published by actors -------------------------------------------------

    def publish_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = EndpointSet(endpoints, self.endpoints.version + 1)
        for endpoint in endpoints:
            self.load.setdefault(endpoint.address, EndpointLoad())
        self._first_snapshot.set()
        self._pulse_slot()

    # -- the request path: endpoints and the bulkhead ----------------------------

    async def acquire(self, avoid: Address | None = None) -> tuple[Endpoint, EndpointLoad]:
        """An endpoint with a free slot (the bulkhead), preferring one other than ``avoid``.

        When every endpoint is at ``max_connections_per_instance``, up to
        ``max_pending`` requests wait ``queue_timeout`` for a slot; others get
        ``bulkhead-full`` at once.
        """
        endpoint = self._free_endpoint(avoid)
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
                        endpoint = self._free_endpoint(avoid)
            finally:
                self.pending -= 1
            if endpoint is None:
                self.stats.rejected["bulkhead-full"] += 1
                raise BulkheadFull(
                    f"no endpoint slot came free within {balancer.queue_timeout:g}s", self.name
                )
        load = self.load.get(endpoint.address)
        if load is None:
            load = self.load[endpoint.address] = EndpointLoad()
        load.in_flight += 1
        self.in_flight += 1
        return endpoint, load

    def _free_endpoint(self, avoid: Address | None) -> Endpoint | None:
        endpoints = self.endpoints.endpoints
        if not endpoints:
            raise NoHealthyEndpoints("no endpoint is available", self.name)
        limit = self.policy.balancer.max_connections_per_instance
        load = self.load
        free = [
            e for e in endpoints if (e.address not in load or load[e.address].in_flight < limit)
        ]
        if avoid is not None and len(free) > 1:
            free = [e for e in free if e.address != avoid] or free
        return self._picker.pick(free)

    def release(self, load: EndpointLoad, latency: float) -> None:
        load.in_flight -= 1
        previous = load.ewma_latency
        load.ewma_latency = (
            latency if previous is None else (previous + EWMA_WEIGHT * (latency - previous))
        )
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.set()
            self._drained = trio.Event()
        self._pulse_slot()

    def _pulse_slot(self) -> None:
        if self.pending:
            self._slot_freed.set()
            self._slot_freed = trio.Event()

    # -- reload and operations -----------------------------------------------

    async def update_policy(self, policy: UpstreamPolicy) -> None:
        self.policy = policy
        self.protections = Protections(policy, self.protections)
        change = PolicyChanged(policy)
        for actor in self.actors:
            await actor.inbox_send.send(change)
        self._pulse_slot()  # a larger bulkhead may free waiting requests

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
            "discovery": self.policy.discovery.backend,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "actor_restarts": dict(self.supervisor.restarts),
            "breaker": self.breaker.report(),
            "requests": {str(code): count for code, count in sorted(stats.requests.items())},
            "retries": dict(stats.retries),
            "rate_limited": stats.rate_limited,
            "rejected": {**stats.rejected, "circuit-open": stats.breaker_rejected},
            "fallbacks": dict(stats.fallbacks),
            "endpoints": [self._endpoint_report(endpoint) for endpoint in self.endpoints.endpoints],
        }

    def _endpoint_report(self, endpoint: Endpoint) -> dict[str, Any]:
        load = self.load.get(endpoint.address, EndpointLoad())
        return {
            "address": str(endpoint.address),
            "weight": endpoint.weight,
            "zone": endpoint.zone,
            "health": "healthy",
            "ejected": False,
            "in_flight": load.in_flight,
            "ewma_latency_ms": None if load.ewma_latency is None else load.ewma_latency * 1000,
        }
