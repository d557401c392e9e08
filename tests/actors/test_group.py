"""An upstream's actor group: snapshots, policy updates, outcomes and crashes."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.messages import EndpointsReset
from meshnode.actors.supervisor import RestartPolicy
from meshnode.errors import BulkheadFull, NoHealthyEndpoints
from meshnode.events import ActorRestarted, EventBus, ServiceChanged
from meshnode.policy.models import (
    BalancerPolicy,
    CircuitBreakerPolicy,
    Endpoint,
    SessionAffinity,
    StaticDiscovery,
    UpstreamPolicy,
    UpstreamSection,
)
from meshnode.policy.units import Address, Duration

A = Endpoint(Address("127.0.0.1", 9001))
B = Endpoint(Address("127.0.0.1", 9002))


def policy(*endpoints: Endpoint) -> UpstreamPolicy:
    return UpstreamPolicy(UpstreamSection("api"), StaticDiscovery(endpoints=endpoints))


@pytest.fixture
async def group(nursery: trio.Nursery) -> UpstreamGroup:
    started = UpstreamGroup(policy(A, B), EventBus(), RestartPolicy(initial_backoff=0.5))
    await nursery.start(started.run)
    return started


async def pick(group: UpstreamGroup) -> Endpoint:
    endpoint, load = await group.picker.acquire()
    group.picker.release(load, 0.001)
    return endpoint


async def test_started_means_the_endpoints_are_published(group: UpstreamGroup) -> None:
    assert group.picker.endpoints.endpoints == (A, B)
    assert [await pick(group), await pick(group), await pick(group)] == [A, B, A]


async def test_a_discovery_change_publishes_a_new_snapshot_and_an_event(group) -> None:
    with group.bus.subscribe() as events:
        await group.update_policy(policy(B))
        await trio.testing.wait_all_tasks_blocked()
        assert group.picker.endpoints.endpoints == (B,)
        event = await events.receive()
    assert isinstance(event, ServiceChanged)
    assert (event.instances, event.previous) == (
        ["127.0.0.1:9002"],
        ["127.0.0.1:9001", "127.0.0.1:9002"],
    )


async def test_state_survives_a_change_it_does_not_concern(nursery) -> None:
    breaker = CircuitBreakerPolicy(failure_threshold=2)
    group = UpstreamGroup(attrs.evolve(policy(A, B), circuit_breaker=breaker), EventBus())
    await nursery.start(group.run)
    core = group.breaker.core
    assert core is not None
    core.record(core.admit(0) or pytest.fail(), failed=True, duration=0.1, now=0)
    _, load = await group.picker.acquire()
    group.picker.release(load, 0.010)
    version = group.picker.endpoints.version
    changed = attrs.evolve(
        group.policy, timeout=attrs.evolve(group.policy.timeout, request=Duration(1))
    )
    await group.update_policy(changed)
    await trio.testing.wait_all_tasks_blocked()
    assert group.policy.timeout.request == 1
    assert group.picker.endpoints.version == version  # discovery untouched: no new snapshot
    assert group.breaker.core is core
    assert (core.total_calls, core.consecutive_failures) == (1, 1)
    assert group.picker.load[A.address].latency.value == pytest.approx(0.010)


async def test_an_empty_endpoint_set_is_no_healthy_endpoints(group: UpstreamGroup) -> None:
    await group.balancer.inbox_send.send(EndpointsReset(()))
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(NoHealthyEndpoints):
        await group.picker.acquire()


@pytest.mark.parametrize("actor", ["discovery", "prober", "breaker", "balancer"])
async def test_a_crashed_actor_is_restarted_and_the_upstream_keeps_serving(
    group: UpstreamGroup, actor: str, autojump_clock
) -> None:
    with group.bus.subscribe() as events:
        group.inject_fault(actor)
        await trio.testing.wait_all_tasks_blocked()
        assert await pick(group) in (A, B)  # the published snapshot outlives the crash
        await trio.sleep(1)
        restarted = await events.receive()
    assert isinstance(restarted, ActorRestarted)
    assert (restarted.actor, restarted.restarts) == (actor, 1)
    assert group.supervisor.restarts[actor] == 1
    await group.update_policy(policy(A))  # and the restarted actor works
    await trio.testing.wait_all_tasks_blocked()
    assert group.picker.endpoints.endpoints == (A,)


async def test_drain_waits_for_requests_in_flight(group: UpstreamGroup, autojump_clock) -> None:
    _, load = await group.picker.acquire()

    async def finish_later() -> None:
        await trio.sleep(3)
        group.picker.release(load, 3.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_later)
        assert await group.picker.drain(10)
    assert trio.current_time() == pytest.approx(3)
    await group.picker.acquire()
    assert not await group.picker.drain(5)


async def test_concurrent_drains_all_end_with_the_last_request(
    group: UpstreamGroup, autojump_clock
) -> None:
    _, load = await group.picker.acquire()
    drained = []

    async def drain() -> None:
        drained.append(await group.picker.drain(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        group.picker.release(load, 1.0)
    assert drained == [True, True]
    assert trio.current_time() == 0


async def test_the_bulkhead_queues_then_refuses(nursery, autojump_clock) -> None:
    balancer = BalancerPolicy(
        max_connections_per_instance=1, max_pending=1, queue_timeout=Duration(2)
    )
    group = UpstreamGroup(attrs.evolve(policy(A), balancer=balancer), EventBus())
    await nursery.start(group.run)
    _, held = await group.picker.acquire()
    waited: list[float] = []

    async def wait_for_slot() -> None:
        _, load = await group.picker.acquire()
        waited.append(trio.current_time())
        group.picker.release(load, 0.0)

    nursery.start_soon(wait_for_slot)
    await trio.testing.wait_all_tasks_blocked()
    assert group.picker.pending == 1
    with pytest.raises(BulkheadFull, match="and 1 are waiting"):
        await group.picker.acquire()  # max_pending reached: refused at once
    await trio.sleep(1)
    group.picker.release(held, 1.0)
    await trio.testing.wait_all_tasks_blocked()
    assert waited == [pytest.approx(1)]
    _, held = await group.picker.acquire()
    with pytest.raises(BulkheadFull, match="within 2s"):
        await group.picker.acquire()  # waits queue_timeout, then gives up
    assert group.stats.rejected["bulkhead-full"] == 2


async def test_a_retry_prefers_another_endpoint(group: UpstreamGroup) -> None:
    for _ in range(4):
        endpoint, load = await group.picker.acquire(avoid=A.address)
        group.picker.release(load, 0.0)
        assert endpoint == B


async def test_an_unhealthy_sticky_endpoint_falls_back_to_the_strategy(nursery) -> None:
    affinity = BalancerPolicy(session_affinity=SessionAffinity(header="x-client-id"))
    group = UpstreamGroup(attrs.evolve(policy(A, B), balancer=affinity), EventBus())
    await nursery.start(group.run)

    async def pick_for(client: bytes) -> Endpoint:
        endpoint, load = await group.picker.acquire(session=client)
        group.picker.release(load, 0.001)
        return endpoint

    first = await pick_for(b"alice")
    assert all([await pick_for(b"alice") == first for _ in range(5)])
    group.picker.set_health(first.address, False, "probe failed")
    other = await pick_for(b"alice")
    assert other != first
    group.picker.set_health(first.address, True, "probe passed")
    assert await pick_for(b"alice") == other  # re-stuck to where it went
    assert group.picker.forget_sessions(b"alice") == 1
