"""Adaptive concurrency limits: the algorithms against a simulated upstream that queues
(capacity C servers of S seconds each, FIFO), and the library's ``AdaptiveLimiter``."""

from __future__ import annotations

import heapq
import random
import statistics

import pytest
import trio
import trio.testing

from meshnode.resilience import AdaptiveLimiter, LimitExceededError
from meshnode.resilience.core.concurrency import LimitConfig, LimiterCore

SERVICE = 0.020  # seconds a call takes at the upstream once it is served


def simulate(
    core: LimiterCore, capacity: int, demand: int, seconds: float, *, grow_at: float = 0.0,
    grown: int = 0,
) -> tuple[list[tuple[float, float]], list[tuple[float, int]]]:  # fmt: skip
    """``demand`` callers in a closed loop (a refused one tries again 1 ms later) against
    ``capacity`` servers, ``grown`` more from ``grow_at``: (time, RTT) of every call, and
    (time, limit) after each."""
    events: list[tuple[float, int, str, tuple[float, int]]] = []
    queue: list[tuple[float, int]] = []
    free, order, rtts, limits = capacity, 0, [], []

    def push(at: float, kind: str, call: tuple[float, int] = (0.0, 0)) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, call))

    for _ in range(demand):
        push(0.0, "try")
    if grown:
        push(grow_at, "grow")
    while events:
        now, _, kind, call = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "grow":
            free += grown
        if kind == "try":
            started = core.admit()
            if started is None:
                push(now + 0.001, "try")
                continue
            queue.append((now, started))
        if kind == "done":
            core.finish(call[1], now - call[0])
            rtts.append((now, now - call[0]))
            limits.append((now, core.limit))
            push(now, "try")
            free += 1
        while free and queue:
            free -= 1
            push(now + SERVICE, "done", queue.pop(0))
    return rtts, limits


def overloaded(algorithm: str, **tuning: float) -> tuple[LimiterCore, list[float], float]:
    """Eight servers, 128 callers, 10 s: the core, the RTTs after the first second, and
    the successful calls a second (capacity: 400)."""
    core = LimiterCore(LimitConfig(algorithm, **tuning), random.Random(7))  # type: ignore[arg-type]
    rtts, _ = simulate(core, 8, 128, 10.0)
    settled = [rtt for at, rtt in rtts if at > 1.0]
    return core, settled, len(settled) / 9.0


@pytest.mark.parametrize("algorithm", ["vegas", "gradient"])
def test_an_overloaded_upstream_keeps_its_throughput_and_a_short_queue(algorithm: str) -> None:
    _, rtts, goodput = overloaded(algorithm)
    assert goodput >= 0.7 * 400
    # At most one turn in the queue (RTTs here are whole turns of 20 ms); without a limit
    # the median call waits 128/8 turns: 320 ms.
    assert statistics.median(rtts) <= 2 * SERVICE + 1e-9


def test_without_a_limit_the_queue_is_the_callers() -> None:
    _, rtts, _ = overloaded("fixed", initial_limit=128)
    assert statistics.median(rtts) == pytest.approx(16 * SERVICE)


def test_the_limit_rises_again_when_the_upstream_can_take_more() -> None:
    core = LimiterCore(LimitConfig("vegas"), random.Random(7))
    _, limits = simulate(core, 8, 128, 10.0, grow_at=5.0, grown=24)
    before = [limit for at, limit in limits if at < 5.0][-1]
    assert before < 24 and limits[-1][1] > 32


def test_gradient_probes_so_that_it_never_drifts_up() -> None:
    core, rtts, _ = overloaded("gradient", probe_interval=200)
    assert core.limit < 32 and statistics.median(rtts) <= 2 * SERVICE + 1e-9


def test_gradient2_creeps_up_under_sustained_overload() -> None:
    """What docs/adaptive.md warns of: its long-term RTT follows the short one on an
    upstream that only queues, so the limit keeps rising past the capacity of 8."""
    core = LimiterCore(LimitConfig("gradient2"), random.Random(7))
    _, limits = simulate(core, 8, 128, 10.0)
    at_five = [limit for at, limit in limits if at < 5.0][-1]
    assert (at_five, limits[-1][1]) == (21, 50)  # the figures the docs give


def test_a_drop_shrinks_the_limit() -> None:
    core = LimiterCore(LimitConfig("gradient", initial_limit=40, smoothing=1.0))
    started = core.admit()
    assert started is not None
    core.finish(started, 0.01, dropped=True)
    assert core.limit < 40


def test_an_unknown_algorithm_is_named() -> None:
    with pytest.raises(ValueError, match="expected one of gradient2, gradient, vegas, fixed"):
        LimiterCore(LimitConfig("aimd"))


async def test_the_library_refuses_over_the_limit_and_learns_from_each_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = AdaptiveLimiter("fixed", initial_limit=2, clock=trio.current_time)
    release = trio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(limiter.call, slow)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LimitExceededError):
            await limiter.call(slow)
        release.set()
    assert limiter.metrics() == {"algorithm": "fixed", "limit": 2, "in_flight": 0, "rejected": 1}


async def test_a_timeout_counts_as_dropped_and_a_cancel_as_nothing(autojump_clock) -> None:
    limiter = AdaptiveLimiter("gradient", initial_limit=40, smoothing=1.0, clock=trio.current_time)

    async def times_out() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await limiter.call(times_out)
    assert limiter.limit < 40 and limiter.in_flight == 0
    with trio.move_on_after(1):
        await limiter.call(trio.sleep_forever)
    assert limiter.in_flight == 0


def vegas(**tuning: float) -> LimiterCore:
    return LimiterCore(LimitConfig("vegas", initial_limit=10, max_limit=20, **tuning))


@pytest.mark.parametrize(
    ("rtt", "expected"),
    [
        (0.010, 16),  # no queue (up to log10 = 1): grows by beta x 1
        (0.014, 10),  # a queue of ceil(10 x 0.29) = 3: from alpha to beta, left alone
        (0.050, 9),  # a queue of 8, over beta x 1: shrinks by 1, unsmoothed
    ],
)
def test_vegas_moves_as_the_librarys_vegaslimit(rtt: float, expected: int) -> None:
    core = vegas()
    core.algorithm.sample(0.010, 10, False)  # the first RTT is the no-load one
    core.algorithm.sample(rtt, 11, False)
    assert core.limit == expected


def test_vegas_smoothing_weighs_a_new_limit_when_asked() -> None:
    core = vegas(smoothing=0.5)
    core.algorithm.sample(0.010, 10, False)
    core.algorithm.sample(0.010, 11, False)
    assert core.algorithm.limit == 13.0  # halfway from 10 to 16
