"""The four actors of an upstream group, with the behaviour this stage of meshnode has.

Each actor object outlives a crash of its ``run``: the supervisor calls ``run``
again on the same object, with the same inbox, and ``run`` starts by
re-deriving what it publishes (the discovery watcher re-sends a ``Reset``), so
a restart heals a lost message as well as a bad state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import trio

from meshnode.actors.messages import (
    CrashForTest,
    EndpointsAdded,
    EndpointsRemoved,
    EndpointsReset,
    InjectedFault,
    PolicyChanged,
    RequestFinished,
)
from meshnode.actors.snapshots import BreakerState, BreakerStatistics
from meshnode.events import ServiceChanged
from meshnode.policy.models import Endpoint

if TYPE_CHECKING:
    from meshnode.actors.group import UpstreamGroup

INBOX_SIZE = 256


class Actor:
    name: ClassVar[str]

    def __init__(self, group: UpstreamGroup) -> None:
        self.group = group
        self.inbox_send, self.inbox_recv = trio.open_memory_channel[object](INBOX_SIZE)

    async def run(self) -> None:
        await self.started()
        async for message in self.inbox_recv:
            if isinstance(message, CrashForTest):
                raise InjectedFault(f"{self.name}: {message.reason}")
            await self.handle(message)

    async def started(self) -> None:
        """Called at every (re)start, before the first message."""

    async def handle(self, message: object) -> None:
        """One message from the inbox; what it does not understand, it ignores."""


class DiscoveryWatcher(Actor):
    """Turns the ``[discovery]`` policy into endpoint updates for the balancer (static today)."""

    name = "discovery"

    async def started(self) -> None:
        self._discovery = self.group.policy.discovery
        await self._resolve()

    async def handle(self, message: object) -> None:
        if isinstance(message, PolicyChanged) and message.policy.discovery != self._discovery:
            self._discovery = message.policy.discovery
            await self._resolve()

    async def _resolve(self) -> None:
        endpoints = self._discovery.endpoints
        previous = [str(e.address) for e in self.group.endpoints.endpoints]
        await self.group.balancer.inbox_send.send(EndpointsReset(endpoints))
        instances = [str(e.address) for e in endpoints]
        if instances != previous:
            self.group.bus.publish(
                ServiceChanged(upstream=self.group.name, instances=instances, previous=previous)
            )


class Balancer(Actor):
    """Owns the endpoint set and publishes it as an immutable snapshot."""

    name = "balancer"

    async def handle(self, message: object) -> None:
        group = self.group
        current = {e.address: e for e in group.endpoints.endpoints}
        if isinstance(message, EndpointsReset):
            current = {e.address: e for e in message.endpoints}
        elif isinstance(message, EndpointsAdded):
            current.update((e.address, e) for e in message.endpoints)
        elif isinstance(message, EndpointsRemoved):
            for address in message.addresses:
                current.pop(address, None)
        else:
            return
        endpoints: tuple[Endpoint, ...] = tuple(current.values())
        group.publish_endpoints(endpoints)


class HealthProber(Actor):
    """Active health checks arrive with the health issue; today it only follows the policy."""

    name = "prober"


class Breaker(Actor):
    """Counts outcomes; the state machine arrives with the resilience issue (always closed)."""

    name = "breaker"

    def __init__(self, group: UpstreamGroup) -> None:
        super().__init__(group)
        self.state = BreakerState.CLOSED
        self.successes = 0
        self.failures = 0
        self.dropped = 0

    def offer(self, outcome: RequestFinished) -> None:
        """From the request path: never waits; when the inbox is full the sample is dropped."""
        try:
            self.inbox_send.send_nowait(outcome)
        except trio.WouldBlock:
            self.dropped += 1

    async def handle(self, message: object) -> None:
        if isinstance(message, RequestFinished):
            if 0 < message.status < 500:
                self.successes += 1
            else:
                self.failures += 1

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(self.state, self.successes, self.failures, self.dropped)
