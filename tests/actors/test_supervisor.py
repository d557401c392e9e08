"""Supervision with a mock clock: restarts, backoff, storms."""

from __future__ import annotations

import trio
import trio.testing

from meshnode.actors.supervisor import RestartPolicy, Supervisor
from meshnode.events import ActorRestarted, EventBus

POLICY = RestartPolicy(initial_backoff=1, max_backoff=8, storm_limit=3, storm_window=60)


class Flaky:
    """Crashes ``crashes`` times, then runs until cancelled; records when it started."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.starts: list[float] = []

    async def run(self) -> None:
        self.starts.append(trio.current_time())
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"crash {len(self.starts)}")
        await trio.sleep_forever()


async def test_crashes_are_restarted_with_doubling_backoff(nursery, autojump_clock) -> None:
    bus = EventBus()
    supervisor = Supervisor("api", bus, POLICY)
    actor = Flaky(crashes=3)
    with bus.subscribe() as events:
        nursery.start_soon(supervisor.supervise, "balancer", actor.run)
        await trio.sleep(100)
        assert actor.starts == [0, 1, 3, 7]  # delays 1, 2, 4
        assert supervisor.restarts == {"balancer": 3}
        announced = [await events.receive() for _ in range(3)]
    assert all(isinstance(event, ActorRestarted) for event in announced)
    assert [event.error for event in announced] == [  # type: ignore[attr-defined]
        "RuntimeError: crash 1",
        "RuntimeError: crash 2",
        "RuntimeError: crash 3",
    ]
    assert not supervisor.failed


async def test_a_restart_storm_marks_the_upstream_failed_until_calm(
    nursery, autojump_clock
) -> None:
    supervisor = Supervisor("api", EventBus(), POLICY)
    actor = Flaky(crashes=5)
    nursery.start_soon(supervisor.supervise, "breaker", actor.run)
    await trio.sleep(16)  # crashes at 0, 1, 3, 7, 15: the fourth within 60 s is a storm
    assert supervisor.failed
    assert supervisor.restarts == {"breaker": 5}
    await trio.sleep(16)  # in a storm, restarts slow down to max_backoff (8 s)
    assert actor.starts[-1] - actor.starts[-2] == 8
    await trio.sleep(60)  # a whole window without a crash
    assert not supervisor.failed


async def test_an_actor_that_returns_is_not_restarted(nursery, autojump_clock) -> None:
    supervisor = Supervisor("api", EventBus(), POLICY)
    runs = []

    async def once() -> None:
        runs.append(1)

    await supervisor.supervise("prober", once)
    assert runs == [1]
    assert supervisor.restarts == {"prober": 0}


async def test_cancellation_is_not_a_crash(autojump_clock) -> None:
    supervisor = Supervisor("api", EventBus(), POLICY)
    with trio.move_on_after(5):
        await supervisor.supervise("prober", trio.sleep_forever)
    assert supervisor.restarts == {"prober": 0}
