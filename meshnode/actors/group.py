"""Theory of operation: an upstream's actor group, and the face it shows the request path.

Five actors run under one supervisor, each the only owner of its state and
each fed by its own bounded channel:

    discovery watcher --EndpointsReset--> balancer --> EndpointSet snapshot (the picker)
    health prober     probes the endpoints, and tells the picker which are healthy
    breaker           owns the breaker state machine: its timer, reloads, operator overrides
    replayer          replays the queue fallback's stored requests once the upstream is back

The request path never waits on an actor. It reads the policy published on this
object and the endpoints published on its ``picker`` (actors/picking.py), where it
takes an endpoint slot (``acquire``, the bulkhead) and gives it back with the
outcome (``release``). Actors are handed the picker, the bus and narrow callables,
never the group. The breaker's
admission and outcome recording are synchronous calls into its sans-IO core:
strict half-open admission under concurrency cannot wait for a channel round
trip, and in Trio's single thread a synchronous call is exactly an actor that
answers at once. A reload hands the group a new policy (``update_policy``):
requests that start afterwards use it, every actor is told, and state that the
change does not concern (breaker state, budgets, buckets, caches, latency
averages) carries on.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import trio

from meshnode.actors.actors import Actor, Balancer, Breaker, DiscoveryWatcher, HealthProber
from meshnode.actors.messages import CrashForTest, PolicyChanged
from meshnode.actors.picking import EndpointPicker
from meshnode.actors.probes import Probe
from meshnode.actors.protections import Protections
from meshnode.actors.replay import Deliverer, Replayer
from meshnode.actors.stats import UpstreamStats
from meshnode.actors.supervisor import RestartPolicy, Supervisor
from meshnode.events import EndpointHealthChanged, EventBus
from meshnode.net.pool import UpstreamConnections, upstream_connections
from meshnode.policy.models import UpstreamPolicy, UpstreamSection
from meshnode.policy.units import Address
from meshnode.resilience.spool import AsyncSpool

log = logging.getLogger(__name__)


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
        self.bus = bus
        self.supervisor = Supervisor(policy.name, bus, restart)
        self.supervising = False  # the supervisor's task is running (liveness)
        self.protections = Protections(policy)
        self.stats = UpstreamStats()
        self.picker = EndpointPicker(
            policy, self.protections.rng, self.stats, self._announce_health
        )
        # How its connections are made, for the [upstream] section and trust domain it was
        # made for: built once per policy, not per request.
        self._connections: tuple[UpstreamSection, str, UpstreamConnections] | None = None
        self._cancel_scope = trio.CancelScope()
        self.balancer = Balancer(self.picker.publish)
        self.breaker = Breaker(policy.name, policy.circuit_breaker, bus)
        self.discovery = DiscoveryWatcher(
            policy.name, policy.discovery, self.picker, self.balancer.inbox_send.send, bus
        )
        self.prober = HealthProber(policy, self.picker, probe, self.protections.rng)
        deliver = None if deliverer is None else functools.partial(deliverer, self.picker)
        self.replayer = Replayer(policy, queue, deliver, self.breaker, self.picker, bus, self.stats)
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

    @property
    def queue(self) -> AsyncSpool | None:
        """The durable spool of a queue fallback, which the replayer delivers from; the
        engine opens it on the first policy that asks for one."""
        return self.replayer.queue

    @queue.setter
    def queue(self, queue: AsyncSpool | None) -> None:
        self.replayer.queue = queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until ``stop``; "started" once the first endpoint set is published."""
        self.supervising = True
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    for actor in self.actors:
                        nursery.start_soon(self.supervisor.supervise, actor.name, actor.run)
                    await self.picker.first_set()
                    task_status.started()
        finally:
            self.supervising = False

    def stop(self) -> None:
        self._cancel_scope.cancel()

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
        self.picker.update(policy, self.protections.rng)
        change = PolicyChanged(policy)
        for actor in self.actors:
            await actor.inbox_send.send(change)

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
        picker = self.picker
        sessions = picker.balancing.sessions
        return {
            "strategy": self.policy.balancer.strategy,
            "sessions": len(sessions) if sessions is not None else 0,
            "discovery": self.discovery.state.to_json(),
            "failed": self.failed,
            "in_flight": picker.in_flight,
            "pending": picker.pending,
            "actor_restarts": dict(self.supervisor.restarts),
            "breaker": self.breaker.report(),
            "concurrency_limit": self._limit_report(),
            "hedges": self._hedge_report(),
            "requests": {str(code): count for code, count in sorted(stats.requests.items())},
            "retries": dict(stats.retries),
            "tries": dict(stats.tries),
            "rate_limited": stats.rate_limited,
            "rejected": {**stats.rejected, "circuit-open": stats.breaker_rejected},
            "fallbacks": dict(stats.fallbacks),
            "goaways": stats.goaways.count,
            "resent": dict(stats.resent),
            "endpoints": [picker.endpoint_report(e) for e in picker.endpoints.endpoints],
        }

    def _hedge_report(self) -> dict[str, Any] | None:
        """``[hedge]``: the delay a try waits now (None until a percentile has enough
        latencies to read), and the hedges sent, won and held back."""
        protections = self.protections
        if protections.hedge_policy is None:
            return None
        delay = protections.hedge_delay()
        return {
            "delay_ms": None if math.isinf(delay) else round(delay * 1000, 3),
            **self.stats.hedges,
        }

    def _limit_report(self) -> dict[str, Any] | None:
        """``[concurrency_limit]``: the limit found, what is in flight under it, and what the
        algorithm reads (its no-load or long-term RTT)."""
        core = self.protections.concurrency
        if core is None:
            return None
        algorithm = core.algorithm
        baseline = getattr(algorithm, "rtt_noload", None) or getattr(algorithm, "long_rtt", None)
        return {
            "algorithm": core.config.algorithm,
            "limit": core.limit,
            "in_flight": core.inflight,
            "rejected": self.stats.rejected["concurrency-limited"],
            "baseline_rtt_ms": None if baseline is None else round(baseline * 1000, 3),
        }
