"""keep_discovering: registry failures keep the last endpoints; flapping is debounced."""

from __future__ import annotations

import math

import trio
import trio.testing

from meshnode.discovery.runner import DiscoveryState, keep_discovering
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import Endpoint
from meshnode.policy.units import Address

A = Endpoint(Address("10.0.0.1", 80))
B = Endpoint(Address("10.0.0.2", 80))


class ScriptedRegistry:
    """Answers, and failures, on cue (a test double of a Source)."""

    description = "scripted"

    def __init__(self) -> None:
        self.answers: trio.MemorySendChannel[list[Endpoint] | Exception]
        self.answers, self._next = trio.open_memory_channel(math.inf)
        self.watches = 0

    async def watch(self, found: Found) -> None:
        self.watches += 1
        async for answer in self._next:
            if isinstance(answer, Exception):
                raise answer
            found(answer)


async def run(nursery: trio.Nursery) -> tuple[ScriptedRegistry, DiscoveryState, list]:
    registry = ScriptedRegistry()
    state = DiscoveryState("scripted", "scripted")
    published: list[tuple[Endpoint, ...]] = []

    async def publish(endpoints: tuple[Endpoint, ...]) -> None:
        published.append(endpoints)

    nursery.start_soon(keep_discovering, registry, publish, state)
    return registry, state, published


async def test_a_failing_registry_keeps_the_last_endpoints_and_retries(
    nursery: trio.Nursery, autojump_clock
) -> None:
    registry, state, published = await run(nursery)
    await registry.answers.send([A, B])
    await trio.testing.wait_all_tasks_blocked()
    assert published == [(A, B)] and not state.stale
    await registry.answers.send(DiscoveryError("connection refused"))
    await trio.testing.wait_all_tasks_blocked()
    assert published == [(A, B)]  # nothing published: the last set stands
    assert state.stale and state.failures == 1 and state.last_error == "connection refused"
    await registry.answers.send(DiscoveryError("still down"))
    await trio.sleep(1.3)  # the first retry comes after about a second
    assert registry.watches == 2 and state.failures == 2
    await trio.sleep(3)
    await registry.answers.send([A])
    await trio.sleep(1.1)
    assert published[-1] == (A,) and not state.stale and state.failures == 0


async def test_backoff_grows_to_thirty_seconds(nursery: trio.Nursery, autojump_clock) -> None:
    registry, state, _ = await run(nursery)
    for _ in range(20):
        await registry.answers.send(OSError("unreachable"))
    start = trio.current_time()
    while registry.watches < 10:
        await trio.sleep(0.5)
    # 1, 2, 4, 8, 16, then 30 s each (+-20 %): nine waits
    assert 100 < trio.current_time() - start < 170
    assert state.failures >= 9


async def test_flapping_answers_are_debounced_latest_wins(
    nursery: trio.Nursery, autojump_clock
) -> None:
    registry, _, published = await run(nursery)
    await registry.answers.send([A])
    await trio.testing.wait_all_tasks_blocked()
    for answer in ([B], [A], [B], [A, B]):
        await registry.answers.send(answer)
    await trio.testing.wait_all_tasks_blocked()
    assert published == [(A,)]  # within the second after a publish: held back
    await trio.sleep(1.1)
    assert published == [(A,), (A, B)]
