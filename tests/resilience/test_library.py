"""The public library's Trio wrappers, on a mock clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshnode.resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    FaultInjector,
    RateLimitedError,
    Retry,
    RetryPresets,
    TokenBucket,
    retry,
)


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom("no")


async def succeed() -> str:
    return "ok"


async def test_breaker_opens_half_opens_and_closes(autojump_clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, reset_timeout=30, half_open_max_requests=1)
    seen = []
    breaker.on("state-change", lambda change: seen.append(change.to))
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    await trio.sleep(30)
    assert breaker.state == "half-open"
    assert await breaker.call(succeed) == "ok"
    assert seen == ["open", "half-open", "closed"]
    metrics = breaker.metrics()
    assert (metrics.total_requests, metrics.failed_requests, metrics.rejected_requests) == (3, 2, 1)
    assert metrics.current_state == "closed"


async def test_breaker_timeout_is_a_failure(autojump_clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, timeout=2)
    with pytest.raises(trio.TooSlowError):
        await breaker.call(trio.sleep_forever)
    assert breaker.state == "open"
    assert trio.current_time() == pytest.approx(2)


async def test_breaker_fallback_and_ignored_errors() -> None:
    breaker = CircuitBreaker(
        "svc", failure_threshold=1, is_failure=lambda e: not isinstance(e, Boom)
    )
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert breaker.state == "closed"  # Boom does not count

    async def fallback() -> str:
        return "fallback"

    breaker.force_open()
    assert await breaker.call(succeed, fallback=fallback) == "fallback"
    breaker.reset()
    assert await breaker.call(succeed) == "ok"


async def test_a_cancelled_trial_frees_its_slot(autojump_clock) -> None:
    breaker = CircuitBreaker("svc", failure_threshold=1, reset_timeout=1, half_open_max_requests=1)
    with pytest.raises(Boom):
        await breaker.call(fail)
    await trio.sleep(1)
    with trio.move_on_after(0.5):
        await breaker.call(trio.sleep_forever)  # the caller gives up: not an outcome
    assert breaker.state == "half-open"
    assert await breaker.call(succeed) == "ok"
    assert breaker.state == "closed"


async def test_retry_waits_the_backoff_and_calls_back(autojump_clock) -> None:
    calls: list[float] = []
    notes: list[tuple[int, float]] = []

    async def flaky() -> str:
        calls.append(trio.current_time())
        if len(calls) < 4:
            raise ConnectionError("refused")
        return "done"

    async def on_retry(attempt: int, delay: float, error: BaseException) -> None:
        notes.append((attempt, delay))

    policy = Retry(max_retries=5, initial_delay=1, max_delay=100, jitter=0, on_retry=on_retry)
    assert await policy.call(flaky) == "done"
    assert calls == [0, 1, 3, 7]
    assert notes == [(1, 1), (2, 2), (3, 4)]


async def test_retry_gives_up_and_says_so(autojump_clock) -> None:
    exhausted: list[BaseException] = []
    policy = Retry(
        max_retries=2, initial_delay=0.1, jitter=0, on_max_retries_reached=exhausted.append
    )
    with pytest.raises(Boom):
        await policy.call(fail)
    assert len(exhausted) == 1
    never = Retry(retryable_errors=(ConnectionError,))
    with pytest.raises(Boom):
        await never.call(fail)  # not retryable: raised at once
    assert trio.current_time() == pytest.approx(0.1 + 0.2)


async def test_should_retry_decides(autojump_clock) -> None:
    attempts: list[int] = []

    def should_retry(error: BaseException, attempt: int) -> bool:
        attempts.append(attempt)
        return attempt < 3

    with pytest.raises(Boom):
        await Retry(max_retries=10, should_retry=should_retry).call(fail)
    assert attempts == [1, 2, 3]


async def test_retry_decorator_and_presets(autojump_clock) -> None:
    calls = 0

    @retry(max_retries=2, initial_delay=0.5, backoff="constant", jitter=0)
    async def sometimes(value: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError
        return value * 2

    assert await sometimes(21) == 42
    presets = [
        RetryPresets.network_request(),
        RetryPresets.database_operation(),
        RetryPresets.critical_operation(),
        RetryPresets.quick_retry(),
    ]
    assert [p.max_retries for p in presets] == [3, 5, 10, 2]


async def test_bulkhead_waits_then_refuses(nursery, autojump_clock) -> None:
    bulkhead = Bulkhead(1, max_pending=1, queue_timeout=5)
    release = trio.Event()
    nursery.start_soon(bulkhead.call, release.wait)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(BulkheadFullError, match="within 5s"):
        await bulkhead.call(succeed)
    assert trio.current_time() == pytest.approx(5)
    assert bulkhead.rejected == 1
    release.set()
    assert await bulkhead.call(succeed) == "ok"


async def test_token_bucket(autojump_clock) -> None:
    bucket = TokenBucket(rate=2, burst=1)
    bucket.check()
    with pytest.raises(RateLimitedError) as caught:
        bucket.check()
    assert caught.value.retry_after == pytest.approx(0.5)
    await bucket.acquire()
    assert trio.current_time() == pytest.approx(0.5)


async def test_fault_injector_delays(autojump_clock) -> None:
    injector = FaultInjector(delay_percent=100, delay=3, seed=5)
    assert await injector.call(succeed) == "ok"
    assert trio.current_time() == pytest.approx(3)
    assert injector.delayed == 1
