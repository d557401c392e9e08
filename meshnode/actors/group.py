"""Theory of operation: an upstream's actor group, and the face it shows the request path.

Four actors run under one supervisor, each the only owner of its state and
each fed by its own bounded channel:

    discovery watcher --EndpointsReset/Added/Removed--> balancer --> EndpointSet snapshot
    health prober     (probing arrives with the health issue)
    breaker           <--RequestFinished (send_nowait, dropped when full)-- request path

The request path never waits on an actor: it reads the snapshots published on
this object (``endpoints``, ``policy``) and reports each outcome with a
non-blocking send. A reload hands the group a new policy (``update_policy``):
the group's ``policy`` changes for requests that start afterwards, and every
actor is told, so state that the change does not concern (breaker counts,
sessions, latency averages) carries on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from meshnode.actors.actors import Actor, Balancer, Breaker, DiscoveryWatcher, HealthProber
from meshnode.actors.messages import CrashForTest, PolicyChanged, RequestFinished
from meshnode.actors.snapshots import EndpointSet
from meshnode.actors.supervisor import RestartPolicy, Supervisor
from meshnode.errors import NoHealthyEndpoints
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
        self.load: dict[Address, EndpointLoad] = {}
        self.in_flight = 0
        self._drained = trio.Event()
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

    # -- the request path ----------------------------------------------------

    def pick(self) -> Endpoint:
        endpoint = self._picker.pick(self.endpoints.endpoints)
        if endpoint is None:
            raise NoHealthyEndpoints("no endpoint is available", self.name)
        return endpoint

    def request_started(self, endpoint: Endpoint) -> EndpointLoad:
        load = self.load.get(endpoint.address)
        if load is None:
            load = self.load[endpoint.address] = EndpointLoad()
        load.in_flight += 1
        self.in_flight += 1
        return load

    def request_finished(
        self, endpoint: Endpoint, load: EndpointLoad, status: int, latency: float
    ) -> None:
        load.in_flight -= 1
        previous = load.ewma_latency
        load.ewma_latency = (
            latency if previous is None else (previous + EWMA_WEIGHT * (latency - previous))
        )
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.set()
            self._drained = trio.Event()
        self.breaker.offer(RequestFinished(endpoint.address, status, latency))

    # -- reload and operations -----------------------------------------------

    async def update_policy(self, policy: UpstreamPolicy) -> None:
        self.policy = policy
        change = PolicyChanged(policy)
        for actor in self.actors:
            await actor.inbox_send.send(change)

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
        breaker = self.breaker.statistics()
        return {
            "strategy": "round-robin",
            "discovery": self.policy.discovery.backend,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "actor_restarts": dict(self.supervisor.restarts),
            "breaker": {
                "state": breaker.state.value,
                "successes": breaker.successes,
                "failures": breaker.failures,
                "outcomes_dropped": breaker.outcomes_dropped,
            },
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
