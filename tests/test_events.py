from __future__ import annotations

import trio
import trio.testing

from meshnode.events import EventBus, EventsMissed, PolicyRejected


def rejected(n: int) -> PolicyRejected:
    return PolicyRejected(trigger=f"t{n}", errors=[])


async def test_every_subscriber_gets_every_event() -> None:
    bus = EventBus()
    with bus.subscribe() as first, bus.subscribe() as second:
        bus.publish(rejected(1))
        bus.publish(rejected(2))
        for subscription in (first, second):
            assert [(await subscription.receive()).trigger for _ in range(2)] == ["t1", "t2"]


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told() -> None:
    bus = EventBus()
    with bus.subscribe(size=3) as slow:
        for n in range(10):
            bus.publish(rejected(n))  # never blocks, however far behind `slow` is
        missed = await slow.receive()
        assert isinstance(missed, EventsMissed)
        assert missed.count == 7
        assert [(await slow.receive()).trigger for _ in range(3)] == ["t7", "t8", "t9"]


async def test_a_waiting_subscriber_wakes_on_publish(nursery: trio.Nursery) -> None:
    bus = EventBus()
    got: list[str] = []
    with bus.subscribe() as subscription:

        async def listen() -> None:
            got.append((await subscription.receive()).type)

        nursery.start_soon(listen)
        await trio.testing.wait_all_tasks_blocked()
        bus.publish(rejected(1))
        await trio.testing.wait_all_tasks_blocked()
    assert got == ["policy-rejected"]


def test_closed_subscriptions_get_nothing() -> None:
    bus = EventBus()
    subscription = bus.subscribe()
    subscription.close()
    bus.publish(rejected(1))
    assert not subscription._queue


def test_events_serialize_with_their_spec_name() -> None:
    event = PolicyRejected(trigger="admin", errors=["a: b: c"], timestamp=1.5)
    assert event.to_json() == {
        "type": "policy-rejected",
        "timestamp": 1.5,
        "trigger": "admin",
        "errors": ["a: b: c"],
    }
