"""An upstream's actor group: snapshots, policy updates, outcomes and crashes."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.messages import EndpointsReset
from meshnode.actors.supervisor import RestartPolicy
from meshnode.errors import NoHealthyEndpoints
from meshnode.events import ActorRestarted, EventBus, ServiceChanged
from meshnode.policy.models import Discovery, Endpoint, UpstreamPolicy, UpstreamSection
from meshnode.policy.units import Address, Duration

A = Endpoint(Address("127.0.0.1", 9001))
B = Endpoint(Address("127.0.0.1", 9002))


def policy(*endpoints: Endpoint) -> UpstreamPolicy:
    return UpstreamPolicy(UpstreamSection("api"), Discovery(endpoints=endpoints))


@pytest.fixture
async def group(nursery: trio.Nursery) -> UpstreamGroup:
    started = UpstreamGroup(policy(A, B), EventBus(), RestartPolicy(initial_backoff=0.5))
    await nursery.start(started.run)
    return started


async def test_started_means_the_endpoints_are_published(group: UpstreamGroup) -> None:
    assert group.endpoints.endpoints == (A, B)
    assert [group.pick(), group.pick(), group.pick()] == [A, B, A]


async def test_a_discovery_change_publishes_a_new_snapshot_and_an_event(group) -> None:
    with group.bus.subscribe() as events:
        await group.update_policy(policy(B))
        await trio.testing.wait_all_tasks_blocked()
        assert group.endpoints.endpoints == (B,)
        event = await events.receive()
    assert isinstance(event, ServiceChanged)
    assert (event.instances, event.previous) == (
        ["127.0.0.1:9002"],
        ["127.0.0.1:9001", "127.0.0.1:9002"],
    )


async def test_state_survives_a_change_it_does_not_concern(group: UpstreamGroup) -> None:
    load = group.request_started(A)
    group.request_finished(A, load, 200, 0.010)
    load = group.request_started(B)
    group.request_finished(B, load, 503, 0.020)
    await trio.testing.wait_all_tasks_blocked()
    version = group.endpoints.version
    changed = attrs.evolve(
        policy(A, B), timeout=attrs.evolve(policy(A).timeout, request=Duration(1))
    )
    await group.update_policy(changed)
    await trio.testing.wait_all_tasks_blocked()
    assert group.policy.timeout.request == 1
    assert group.endpoints.version == version  # discovery untouched: no new snapshot
    statistics = group.breaker.statistics()
    assert (statistics.successes, statistics.failures) == (1, 1)
    assert group.load[A.address].ewma_latency == pytest.approx(0.010)


async def test_an_empty_endpoint_set_is_no_healthy_endpoints(group: UpstreamGroup) -> None:
    await group.balancer.inbox_send.send(EndpointsReset(()))
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(NoHealthyEndpoints):
        group.pick()


@pytest.mark.parametrize("actor", ["discovery", "prober", "breaker", "balancer"])
async def test_a_crashed_actor_is_restarted_and_the_upstream_keeps_serving(
    group: UpstreamGroup, actor: str, autojump_clock
) -> None:
    with group.bus.subscribe() as events:
        group.inject_fault(actor)
        await trio.testing.wait_all_tasks_blocked()
        assert group.pick() in (A, B)  # the published snapshot outlives the crash
        await trio.sleep(1)
        restarted = await events.receive()
    assert isinstance(restarted, ActorRestarted)
    assert (restarted.actor, restarted.restarts) == (actor, 1)
    assert group.supervisor.restarts[actor] == 1
    await group.update_policy(policy(A))  # and the restarted actor works
    await trio.testing.wait_all_tasks_blocked()
    assert group.endpoints.endpoints == (A,)


async def test_drain_waits_for_requests_in_flight(group: UpstreamGroup, autojump_clock) -> None:
    load = group.request_started(A)

    async def finish_later() -> None:
        await trio.sleep(3)
        group.request_finished(A, load, 200, 3.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_later)
        assert await group.drain(10)
    assert trio.current_time() == pytest.approx(3)
    group.request_started(A)
    assert not await group.drain(5)


async def test_outcomes_are_dropped_not_waited_for_when_the_breaker_lags(group) -> None:
    for _ in range(1000):  # no checkpoint in between: the breaker cannot keep up
        load = group.request_started(A)
        group.request_finished(A, load, 200, 0.001)
    assert group.breaker.dropped > 0
    await trio.testing.wait_all_tasks_blocked()
    statistics = group.breaker.statistics()
    assert statistics.successes + statistics.outcomes_dropped == 1000
