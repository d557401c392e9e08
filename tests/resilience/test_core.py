"""The sans-IO cores: tables from the seed, and properties that must hold for any input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.resilience.core.backoff import RestartBackoff, base_delay, delay
from meshnode.resilience.core.breaker import (
    BUCKETS,
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Override,
    Transition,
)
from meshnode.resilience.core.budget import RetryBudget
from meshnode.resilience.core.faults import FaultPlan, decide
from meshnode.resilience.core.lru import LRU
from meshnode.resilience.core.token_bucket import TokenBucket

SEED_TABLE = {
    "exponential": [100, 200, 400, 800, 1600, 3200],
    "linear": [100, 200, 300, 400, 500, 600],
    "fibonacci": [100, 100, 200, 300, 500, 800],
    "constant": [100, 100, 100, 100, 100, 100],
}


@pytest.mark.parametrize("strategy", sorted(SEED_TABLE))
def test_backoff_gives_the_seeds_table(strategy) -> None:
    delays = [round(base_delay(n, strategy, 0.1, 2) * 1000) for n in range(1, 7)]
    assert delays == SEED_TABLE[strategy]


@given(
    st.sampled_from(sorted(SEED_TABLE)),
    st.integers(1, 30),
    st.floats(0.001, 10),
    st.floats(0.001, 60),
    st.floats(0, 1),
    st.integers(0, 2**32),
)
def test_every_delay_lies_within_its_jitter_bounds(
    strategy, attempt, initial, max_delay, jitter, seed
) -> None:
    d = min(base_delay(attempt, strategy, initial, 2), max_delay)
    got = delay(attempt, strategy, initial, max_delay, jitter=jitter, rng=random.Random(seed))
    assert d * (1 - jitter) - 1e-9 <= got <= min(max_delay, d * (1 + jitter)) + 1e-9


def breaker(**config) -> tuple[BreakerCore, list[Transition]]:
    seen: list[Transition] = []
    return BreakerCore(BreakerConfig(**config), now=0.0, on_transition=seen.append), seen


def call(core: BreakerCore, now: float, *, failed: bool, duration: float = 0.01) -> bool:
    permit = core.admit(now)
    if permit is None:
        return False
    core.record(permit, failed=failed, duration=duration, now=now)
    return True


def test_consecutive_failures_open_then_reset_timeout_half_opens_then_trials_close() -> None:
    core, seen = breaker(
        failure_threshold=3, volume_threshold=100, reset_timeout=30, half_open_max_requests=2
    )
    for second in range(3):
        assert call(core, second, failed=True)
    assert core.state is BreakerState.OPEN
    assert not call(core, 10, failed=False)  # fast rejection
    assert core.rejected == 1
    assert core.next_deadline() == 32
    first, second = core.admit(32), core.admit(32)
    assert core.state is BreakerState.HALF_OPEN
    assert first is not None and second is not None and first.trial
    assert core.admit(32) is None  # only two trials
    core.record(first, failed=False, duration=0.01, now=33)
    assert core.state is BreakerState.HALF_OPEN
    core.record(second, failed=False, duration=0.01, now=33)
    assert core.state is BreakerState.CLOSED
    assert [(t.previous, t.current) for t in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert seen[0].reason == "3 consecutive failures"


def test_a_failed_trial_opens_again() -> None:
    core, _ = breaker(failure_threshold=1, reset_timeout=5)
    call(core, 0, failed=True)
    permit = core.admit(5)
    assert permit is not None and core.state is BreakerState.HALF_OPEN
    core.record(permit, failed=True, duration=0.01, now=6)
    assert core.state is BreakerState.OPEN
    assert core.state_since == 6


def test_error_rate_opens_once_the_volume_is_reached() -> None:
    core, seen = breaker(
        failure_threshold=100, failure_threshold_percentage=50, volume_threshold=10, window=10
    )
    for n in range(9):
        call(core, n * 0.1, failed=n % 2 == 0)  # 5 of 9 failed: volume not reached
    assert core.state is BreakerState.CLOSED
    call(core, 1.0, failed=False)  # 5 of 10
    assert core.state is BreakerState.OPEN
    assert seen[0].reason == "error rate 50% over 10 requests"


def test_old_calls_leave_the_window() -> None:
    core, _ = breaker(failure_threshold=100, volume_threshold=10, window=10)
    for n in range(9):
        call(core, n * 0.1, failed=True)
    for n in range(10):
        call(core, 20 + n * 0.1, failed=False)  # the failures are 20 s old
    assert core.state is BreakerState.CLOSED


@given(
    st.sampled_from([2.5, 10.0, 40.0]),  # bucket widths that are exact in binary
    st.lists(st.tuples(st.integers(0, 400), st.booleans(), st.booleans()), max_size=150),
)
def test_the_window_counts_the_calls_of_its_last_buckets(window, calls) -> None:
    """The window's totals, kept between bucket boundaries instead of summed per call,
    are always those of the calls in the last ``BUCKETS`` buckets' time."""
    core, _ = breaker(
        failure_threshold=10**9, volume_threshold=10**9, window=window, slow_call_duration=1.0
    )
    width = window / BUCKETS
    log: list[tuple[float, bool, bool]] = []
    now = 0.0
    for gap, failed, slow in calls:
        now += gap / 64
        assert call(core, now, failed=failed, duration=2.0 if slow else 0.0)
        log.append((now, failed, slow))
        for at in (now, now + gap / 32):  # a call's own time, and a read later on
            held = [entry for entry in log if int(at // width) - BUCKETS < int(entry[0] // width)]
            expected = (len(held), sum(e[1] for e in held), sum(e[2] for e in held))
            assert core.window_counts(at) == expected


def test_a_new_window_width_counts_the_buckets_again() -> None:
    core, _ = breaker(failure_threshold=100, volume_threshold=100, window=10)
    for n in range(10):
        call(core, n, failed=True)
    assert core.window_counts(9.5) == (10, 10, 0)
    core.reconfigure(BreakerConfig(failure_threshold=100, volume_threshold=100, window=2.5))
    assert core.window_counts(9.5) == (2, 2, 0)  # the calls at 8 s and 9 s


def test_slow_calls_trip_when_asked() -> None:
    core, seen = breaker(
        failure_threshold=100,
        volume_threshold=4,
        slow_call_duration=1.0,
        slow_call_rate_percentage=75,
    )
    for duration in (2.0, 2.0, 0.1, 2.0):
        call(core, 0.5, failed=False, duration=duration)
    assert core.state is BreakerState.OPEN
    assert seen[0].reason == "slow-call rate 75% over 4 requests"


def test_an_outcome_from_before_a_transition_moves_nothing() -> None:
    core, _ = breaker(failure_threshold=2)
    stale = core.admit(0)
    call(core, 0, failed=True)
    call(core, 0, failed=True)
    assert core.state is BreakerState.OPEN
    assert stale is not None
    core.record(stale, failed=False, duration=0.01, now=1)
    assert core.state is BreakerState.OPEN


def test_operator_overrides() -> None:
    core, seen = breaker()
    core.force(Override.OPEN, 1)
    assert core.admit(2) is None and core.state is BreakerState.OPEN
    assert core.admit(10_000) is None  # forced open does not half-open
    core.force(Override.CLOSED, 3)
    for _ in range(50):
        assert call(core, 4, failed=True)  # forced closed does not trip
    core.force(Override.AUTO, 5)
    assert core.state is BreakerState.CLOSED
    assert [t.reason for t in seen] == ["operator set open", "operator set closed"]


@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.sampled_from(["admit", "ok", "fail"]), st.floats(0, 0.5)), max_size=200),
)
def test_half_open_never_admits_more_than_its_trials_at_once(max_trials, steps) -> None:
    core, _ = breaker(failure_threshold=1, reset_timeout=1, half_open_max_requests=max_trials)
    now = 0.0
    call(core, now, failed=True)
    held = []
    for action, advance in steps:
        now += advance
        if action == "admit":
            permit = core.admit(now)
            if permit is not None:
                held.append(permit)
        elif held:
            core.record(held.pop(0), failed=action == "fail", duration=0.0, now=now)
        if core.state is BreakerState.HALF_OPEN:
            trials = [p for p in held if p.trial and p.generation == core.generation]
            assert len(trials) <= max_trials


@given(
    st.floats(0.5, 1000),
    st.integers(1, 100),
    st.lists(st.floats(0, 2), min_size=1, max_size=300),
)
def test_a_token_bucket_never_admits_more_than_burst_plus_rate_times_t(rate, burst, gaps) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted += 1
        assert admitted <= burst + rate * now + 1e-6


def test_token_bucket_says_when_to_retry() -> None:
    bucket = TokenBucket(rate=2, burst=1, now=0)
    assert bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0


def test_retry_budget_allows_ratio_plus_minimum() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=10)
    for _ in range(100):
        budget.record_request(0)
    allowed = sum(budget.try_retry(1) for _ in range(100))
    assert allowed == 20 + 10
    assert budget.exhausted == 70
    assert budget.try_retry(20)  # the window moved on


def test_fault_decisions_follow_the_plan() -> None:
    rng = random.Random(7)
    plan = FaultPlan(abort_percent=30, abort_status=418, delay_percent=10, delay=2.0)
    faults = [decide(plan, rng) for _ in range(10_000)]
    aborted = sum(f.abort_status == 418 for f in faults)
    delayed = sum(f.delay == 2.0 for f in faults)
    assert 2_800 < aborted < 3_200  # 30 % +- 4 sigma
    assert 880 < delayed < 1_120
    assert decide(FaultPlan(), rng).abort_status is None


def test_lru_forgets_the_least_recently_used() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_restart_backoff_doubles_to_its_cap_and_starts_over_on_reset() -> None:
    backoff = RestartBackoff(0.1, 1.0)
    assert [backoff.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
    jittered = RestartBackoff(1.0, 30.0, jitter=0.2, rng=random.Random(3))
    assert 0.8 <= jittered.next() <= 1.2 and jittered.failures == 1
