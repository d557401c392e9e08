"""The health prober's thresholds on a mock clock, with a probe the test controls."""

from __future__ import annotations

import itertools

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.events import EndpointHealthChanged, EventBus
from meshnode.policy.models import (
    Endpoint,
    HealthCheckPolicy,
    StaticDiscovery,
    UpstreamPolicy,
    UpstreamSection,
)
from meshnode.policy.units import Address, Duration

A = Endpoint(Address("127.0.0.1", 9001))


async def test_thresholds_mark_down_then_up(nursery, autojump_clock) -> None:
    answers = {"healthy": True}
    probes: list[float] = []

    async def probe(policy: UpstreamPolicy, address: Address) -> tuple[bool, str]:
        probes.append(trio.current_time())
        return answers["healthy"], "ok" if answers["healthy"] else "down"

    check = HealthCheckPolicy(
        interval=Duration(2), jitter=0.0, unhealthy_threshold=3, healthy_threshold=2
    )
    policy = UpstreamPolicy(
        UpstreamSection("api"), StaticDiscovery(endpoints=(A,)), health_check=check
    )
    group = UpstreamGroup(policy, EventBus(), probe=probe)
    with group.bus.subscribe() as events:
        await nursery.start(group.run)
        await trio.sleep(1)
        answers["healthy"] = False
        await trio.sleep(4)  # probes at 2 and 4: two failures, not yet three
        assert group.picker.health.get(A.address, True)
        await trio.sleep(2)  # the third
        assert group.picker.health[A.address] is False
        answers["healthy"] = True
        await trio.sleep(2)
        assert group.picker.health[A.address] is False  # one success of two
        await trio.sleep(2)
        assert group.picker.health[A.address] is True
        changes = []
        while len(changes) < 2:
            event = await events.receive()
            if isinstance(event, EndpointHealthChanged):
                changes.append(event)
    assert [(e.to, e.reason) for e in changes] == [
        ("unhealthy", "down"),
        ("healthy", "ok"),
    ]
    assert [round(b - a, 6) for a, b in itertools.pairwise(probes[:4])] == [2, 2, 2]


async def test_without_checks_every_endpoint_is_healthy(nursery, autojump_clock) -> None:
    policy = UpstreamPolicy(UpstreamSection("api"), StaticDiscovery(endpoints=(A,)))
    group = UpstreamGroup(policy, EventBus(), probe=None)
    await nursery.start(group.run)
    group.picker.health[A.address] = False
    await trio.sleep(2)
    assert group.picker.health[A.address] is True
