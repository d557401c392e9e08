"""The actors of an upstream group: discovery watcher, balancer, health prober, breaker
(the queue fallback's replayer lives with the queue, in ``actors/replay.py``).

An actor is handed what it works on, not the group: the endpoint picker
(actors/picking.py) it publishes to or reads, the event bus, a callable. It learns
of reloads from its inbox (``PolicyChanged``), like everything else.

Each actor object outlives a crash of its ``run``: the supervisor calls ``run``
again on the same object, with the same inbox, and ``run`` starts by
re-deriving what it publishes (the discovery watcher re-sends a ``Reset``), so
a restart heals a lost message as well as a bad state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import ClassVar

import trio

from meshnode.actors.messages import (
    CrashForTest,
    EndpointsReset,
    InjectedFault,
    PolicyChanged,
)
from meshnode.actors.picking import EndpointPicker
from meshnode.actors.probes import Probe
from meshnode.discovery.backends import make_source
from meshnode.discovery.runner import DiscoveryState, keep_discovering
from meshnode.events import BreakerStateChanged, EventBus, ServiceChanged
from meshnode.policy.models import (
    CircuitBreakerPolicy,
    Discovery,
    Endpoint,
    HealthCheckPolicy,
    UpstreamPolicy,
)
from meshnode.policy.units import Address
from meshnode.resilience.core.breaker import (
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Override,
    Transition,
)

INBOX_SIZE = 256
INITIAL_FETCH_TIMEOUT = 5.0  # seconds a new upstream waits for its registry's first answer


class Actor:
    name: ClassVar[str]

    def __init__(self) -> None:
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[object](INBOX_SIZE)

    async def run(self) -> None:
        """The inbox, one message at a time, beside the actor's own background work (its
        watch, probes, timer), all of it started again at each restart. ``CrashForTest``
        crashes it, as a bug would."""
        async with trio.open_nursery() as nursery:
            await self.started(nursery)
            async for message in self.inbox_recv:
                if isinstance(message, CrashForTest):
                    raise InjectedFault(f"{self.name}: {message.reason}")
                await self.handle(message)

    async def started(self, nursery: trio.Nursery) -> None:
        """Called at every (re)start, before the first message: start background work."""

    async def handle(self, message: object) -> None:
        """One message from the inbox; what it does not understand, it ignores."""


class DiscoveryWatcher(Actor):
    """Runs the upstream's ``[discovery]`` source and hands each endpoint set to the balancer.

    A reload that changes the section stops the old source and starts the new
    one. The group waits for a first endpoint set before it serves: if the
    registry has not answered within ``INITIAL_FETCH_TIMEOUT`` the upstream
    starts with none (requests get 503 ``no-healthy-endpoints``) and the
    first answer fills it in.
    """

    name = "discovery"

    def __init__(
        self,
        upstream: str,
        policy: Discovery,
        picker: EndpointPicker,
        to_balancer: Callable[[object], Awaitable[None]],
        bus: EventBus,
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.picker = picker
        self.to_balancer = to_balancer
        self.bus = bus
        self._current = policy
        self.state = DiscoveryState(policy.backend, policy.backend)

    async def started(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._watching = await nursery.start(self._discover, self._current)

    async def handle(self, message: object) -> None:
        if isinstance(message, PolicyChanged) and message.policy.discovery != self._current:
            self._current = message.policy.discovery
            self._watching.cancel()
            self._watching = await self._nursery.start(self._discover, self._current)

    async def _discover(
        self,
        policy: Discovery,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        source = make_source(policy, self.upstream)
        self.state = DiscoveryState(policy.backend, source.description)
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_discovering, source, self._publish, self.state)
                await trio.sleep(INITIAL_FETCH_TIMEOUT)
                if not self.picker.has_endpoints:
                    self.state.stale = True
                    await self._publish(())

    async def _publish(self, endpoints: tuple[Endpoint, ...]) -> None:
        previous = [str(e.address) for e in self.picker.endpoints.endpoints]
        await self.to_balancer(EndpointsReset(endpoints))
        instances = [str(e.address) for e in endpoints]
        if instances != previous:
            self.bus.publish(
                ServiceChanged(upstream=self.upstream, instances=instances, previous=previous)
            )


class Balancer(Actor):
    """Owns the endpoint set and publishes it as an immutable snapshot."""

    name = "balancer"

    def __init__(self, publish: Callable[[tuple[Endpoint, ...]], None]) -> None:
        super().__init__()
        self.publish = publish

    async def handle(self, message: object) -> None:
        if isinstance(message, EndpointsReset):
            current = {e.address: e for e in message.endpoints}  # one entry per address
            self.publish(tuple(current.values()))


class HealthProber(Actor):
    """Probes every endpoint each ``interval`` (with jitter) and publishes health changes.

    ``unhealthy_threshold`` failures in a row mark an endpoint unhealthy,
    ``healthy_threshold`` successes in a row healthy again. Endpoints start
    healthy, so a new upstream serves at once. Without ``[health_check]`` every
    endpoint is healthy.
    """

    name = "prober"

    def __init__(
        self,
        policy: UpstreamPolicy,
        picker: EndpointPicker,
        probe: Probe | None,
        rng: random.Random,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.picker = picker
        self.probe = probe  # how an endpoint is reached (the node's pool)
        self.rng = rng
        self.streaks: dict[Address, int] = {}  # > 0: successes in a row, < 0: failures

    async def started(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._probe_forever)

    async def handle(self, message: object) -> None:
        if isinstance(message, PolicyChanged):
            self.policy = message.policy

    async def _probe_forever(self) -> None:
        picker = self.picker
        while True:
            policy = self.policy
            check = policy.health_check
            if check is None or self.probe is None:
                for address in list(picker.health):
                    picker.set_health(address, True, "health checking is off")
                self.streaks.clear()
                await trio.sleep(1.0)
                continue
            if not picker.endpoints.endpoints:
                await trio.sleep(min(check.interval, 0.1))  # the first endpoint set is on its way
                continue
            results: dict[Address, tuple[bool, str]] = {}
            async with trio.open_nursery() as probes:
                for endpoint in picker.endpoints.endpoints:
                    probes.start_soon(self._probe, policy, endpoint.address, results)
            for address, (healthy, reason) in results.items():
                self._count(address, healthy, reason, check)
            self.streaks = {a: s for a, s in self.streaks.items() if a in results}
            jitter = self.rng.uniform(-check.jitter, check.jitter)
            await trio.sleep(check.interval * (1 + jitter))

    async def _probe(
        self, policy: UpstreamPolicy, address: Address, results: dict[Address, tuple[bool, str]]
    ) -> None:
        assert self.probe is not None
        results[address] = await self.probe(policy, address)

    def _count(
        self, address: Address, healthy: bool, reason: str, check: HealthCheckPolicy
    ) -> None:
        streak = self.streaks.get(address, 0)
        streak = max(streak, 0) + 1 if healthy else min(streak, 0) - 1
        self.streaks[address] = streak
        if streak <= -check.unhealthy_threshold:
            self.picker.set_health(address, False, reason)
        elif streak >= check.healthy_threshold:
            self.picker.set_health(address, True, reason)


class Breaker(Actor):
    """Owns the upstream's circuit breaker: its timer, reconfiguration and operator overrides.

    ``core`` is None when the policy has no ``[circuit_breaker]``. The request
    path calls ``admit`` and ``record`` synchronously (see group.py).
    """

    name = "breaker"

    def __init__(self, upstream: str, policy: CircuitBreakerPolicy | None, bus: EventBus) -> None:
        super().__init__()
        self.upstream = upstream
        self.policy = policy
        self.bus = bus
        self.override = Override.AUTO
        self.core = self._make_core(policy)
        self._armed = trio.CancelScope()  # the timer's wait, cancelled to set it again

    def _make_core(self, policy: CircuitBreakerPolicy | None) -> BreakerCore | None:
        if policy is None:
            return None
        core = BreakerCore(breaker_config(policy), trio.current_time(), self._announce)
        core.force(self.override, trio.current_time())
        return core

    async def started(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._timer)

    async def _timer(self) -> None:
        """The OPEN -> HALF_OPEN timer: wakes at the core's next deadline, and is set
        again after every message (one may change the deadline)."""
        while True:
            deadline = self.core.next_deadline() if self.core is not None else None
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as armed:
                self._armed = armed
                await trio.sleep_forever()
            if self.core is not None:
                self.core.poll(trio.current_time())

    async def handle(self, message: object) -> None:
        self._armed.cancel()
        if isinstance(message, PolicyChanged):
            policy = self.policy = message.policy.circuit_breaker
            if policy is None:
                if self.override is Override.AUTO:
                    self.core = None
            elif self.core is None:
                self.core = self._make_core(policy)
            else:
                self.core.reconfigure(breaker_config(policy))

    def force(self, override: Override) -> None:
        """Operator override, kept across reloads until set back to auto.

        An upstream without ``[circuit_breaker]`` gets a breaker for as long as
        it is forced, so an operator can always cut (or keep) its traffic.
        """
        self.override = override
        policy = self.policy
        if self.core is None:
            self.core = self._make_core(policy or CircuitBreakerPolicy())
        elif override is Override.AUTO and policy is None:
            self.core = None
        else:
            self.core.force(override, trio.current_time())

    def _announce(self, transition: Transition) -> None:
        self.bus.publish(
            BreakerStateChanged(
                upstream=self.upstream,
                from_=transition.previous.value,
                to=transition.current.value,
                reason=transition.reason,
            )
        )

    def report(self) -> dict[str, object]:
        core = self.core
        if core is None:
            return {"enabled": False, "state": BreakerState.CLOSED.value}
        now = trio.current_time()
        calls, failures, _ = core.window_counts(now)
        return {
            "enabled": True,
            "state": core.state.value,
            "override": core.override.value,
            "seconds_in_state": round(now - core.state_since, 3),
            "total_requests": core.total_calls,
            "total_failures": core.total_failures,
            "rejected_requests": core.rejected,
            "window": {"requests": calls, "failures": failures},
            "consecutive_failures": core.consecutive_failures,
        }


def breaker_config(policy: CircuitBreakerPolicy) -> BreakerConfig:
    return BreakerConfig(
        failure_threshold=policy.failure_threshold,
        failure_threshold_percentage=policy.failure_threshold_percentage,
        volume_threshold=policy.volume_threshold,
        window=policy.window,
        reset_timeout=policy.reset_timeout,
        half_open_max_requests=policy.half_open_max_requests,
        slow_call_duration=policy.slow_call_duration,
        slow_call_rate_percentage=policy.slow_call_rate_percentage,
    )
