"""A Pulse wakes the tasks waiting when it fires, and remembers nothing else."""

from __future__ import annotations

import trio
import trio.testing

from meshnode.net.pulse import Pulse


async def test_a_fire_wakes_every_waiter_and_only_those_waiting() -> None:
    pulse = Pulse()
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await pulse.wait()
        woken.append(name)

    pulse.fire()  # nobody waits: not remembered
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        pulse.fire()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == ["a", "b"]
        nursery.start_soon(waiter, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 2  # c waits for the next fire
        pulse.fire()
    assert sorted(woken) == ["a", "b", "c"]


async def test_a_cancelled_waiter_is_no_longer_counted() -> None:
    pulse = Pulse()
    with trio.CancelScope() as scope:
        scope.cancel()
        await pulse.wait()
    assert pulse._waiting == 0
    first = pulse._event
    pulse.fire()  # nobody waits: the event is kept, unset
    assert pulse._event is first and not first.is_set()
