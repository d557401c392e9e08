"""The seed's examples, ported one call at a time, mean what they meant there.

Each test here is a case where a line-by-line port used to give a wrong answer without a
word (a check reported healthy, a delay in hours, a share a hundred times too small) or an
error where the seed's shape is natural in Python too.
"""

from __future__ import annotations

import datetime
import errno
import random

import pytest
import trio
import trio.testing

from meshnode.resilience import (
    CheckOutcome,
    CircuitBreaker,
    CommonHealthChecks,
    FaultInjector,
    HealthCheck,
    HealthCheckManager,
    InjectedFaultError,
    Retry,
    RetryPresets,
    ServiceDiscovery,
    TokenBucket,
)
from meshnode.resilience.durations import seconds

MODULE_BREAKER = CircuitBreaker("module-level", failure_threshold=1, reset_timeout="5m")
MODULE_BUCKET = TokenBucket(rate=1, burst=2)


# -- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CircuitBreaker("p", timeout=10000), r'timeout=10000 is 2\.8 hours.*"10000ms"'),
        (lambda: CircuitBreaker("p", reset_timeout=300000), r"reset_timeout=300000 is 3\.5 days"),
        (lambda: Retry(initial_delay=100), r'initial_delay=100 is .*"100ms"'),
        (lambda: Retry(max_delay=5000), r"max_delay=5000 is 1\.4 hours"),
        (lambda: HealthCheckManager(liveness_interval=5000), "liveness_interval=5000"),
        (lambda: FaultInjector(failure_rate=0.3, latency=2000), r"latency=2000 is"),
        (
            lambda: ServiceDiscovery("static", refresh_interval=15000, endpoints=["127.0.0.1:1"]),
            r'refresh_interval=15000 is 4\.2 hours.*"15000ms"',
        ),
    ],
)
def test_a_bare_number_in_milliseconds_is_refused_with_the_way_to_write_it(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_durations_are_strings_timedeltas_or_seconds() -> None:
    assert seconds("100ms", "x") == 0.1
    assert seconds(datetime.timedelta(minutes=5), "x") == 300.0
    assert seconds(2.5, "x") == 2.5
    assert CircuitBreaker("p", timeout="10s", reset_timeout="5m").timeout == 10.0
    assert Retry(initial_delay="100ms", max_delay="5s").max_delay == 5.0


# -- retry ---------------------------------------------------------------------------------


def test_jitter_true_is_the_seeds_factor_not_a_full_spread() -> None:
    retry = Retry(initial_delay="100ms", backoff="constant", jitter=True, rng=random.Random(7))
    delays = [retry.delay_for(1) for _ in range(500)]
    assert min(delays) >= 0.08 and max(delays) <= 0.12
    assert Retry(jitter=True, jitter_factor=0.5).jitter == 0.5
    assert Retry(jitter=False).jitter == 0.0


async def test_retryable_errors_by_errno_name_code_or_class_name(autojump_clock) -> None:
    class DeadlockError(Exception):
        code = "ER_LOCK_DEADLOCK"

    retry = Retry(
        max_retries=1,
        initial_delay="10ms",
        retryable_errors=["ECONNREFUSED", "ER_LOCK_DEADLOCK", "TimeoutError"],
    )
    for error in (
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        DeadlockError(),
        TimeoutError(),
    ):
        tries: list[int] = []

        def fail_once(error=error, tries=tries) -> str:
            tries.append(1)
            if len(tries) == 1:
                raise error
            return "ok"

        assert await retry.execute(fail_once) == "ok"
    with pytest.raises(ValueError):
        await retry.call(_raise, ValueError("not listed"))


async def test_retry_metrics_in_the_seeds_terms(autojump_clock) -> None:
    retry = Retry(max_retries=2, initial_delay="10ms")
    attempts = iter(
        [ConnectionError(), "first", ConnectionError(), ConnectionError(), ConnectionError()]
    )

    async def next_answer() -> str:
        answer = next(attempts)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await retry.call(next_answer) == "first"
    with pytest.raises(ConnectionError):
        await retry.call(next_answer)
    metrics = retry.metrics()
    assert (metrics.total_calls, metrics.total_attempts) == (2, 5)
    assert (metrics.successful_retries, metrics.failed_after_retries) == (1, 1)
    assert metrics.average_retries == 1.5


def test_no_preset_backs_off_at_a_constant_pace_without_jitter() -> None:
    presets = [
        RetryPresets.network_request(),
        RetryPresets.database_operation(),
        RetryPresets.critical_operation(),
        RetryPresets.quick_retry(),
    ]
    assert all(p.jitter > 0 for p in presets if p.backoff == "constant")


# -- breaker -------------------------------------------------------------------------------


async def test_a_plain_fallback_and_the_seeds_execute() -> None:
    breaker = CircuitBreaker("p")

    def broken() -> list[str]:
        raise ConnectionError("down")

    assert await breaker.call(broken, fallback=lambda: []) == []
    assert await breaker.execute(broken, lambda: ["queued"]) == ["queued"]
    assert await breaker.execute(lambda: "sync works too") == "sync works too"


async def test_an_async_failure_predicate_is_awaited() -> None:
    async def counts(error: BaseException) -> bool:
        return not isinstance(error, ValueError)  # a validation error is no outage

    breaker = CircuitBreaker("p", failure_threshold=1, volume_threshold=1, is_failure=counts)
    with pytest.raises(ValueError):
        await breaker.call(_raise, ValueError("bad input"))
    assert breaker.state == "closed"
    with pytest.raises(ConnectionError):
        await breaker.call(_raise, ConnectionError())
    assert breaker.state == "open"


async def test_a_fallback_passed_as_an_argument_is_a_clear_error_not_a_failure() -> None:
    breaker = CircuitBreaker("p")

    async def process() -> str:
        return "paid"

    async def queue() -> str:
        return "queued"

    with pytest.raises(TypeError, match=r"breaker\.execute\(fn, fallback\)"):
        await breaker.call(process, queue)
    assert breaker.metrics().failed_requests == 0


def test_a_breaker_and_a_bucket_are_built_outside_any_run() -> None:
    """As pybreaker's users hold theirs: at module level. Each run that uses one after
    another has ended starts it afresh."""

    async def use() -> tuple[str, bool]:
        with pytest.raises(ConnectionError):
            await MODULE_BREAKER.call(_raise, ConnectionError())
        return MODULE_BREAKER.state, MODULE_BUCKET.try_acquire()

    assert trio.run(use) == ("open", True)
    assert trio.run(use) == ("open", True)  # closed and full again at the start of a run


def test_one_breaker_serves_one_run_at_a_time() -> None:
    breaker = CircuitBreaker("shared")
    used = trio.Event()
    release = trio.Event()

    async def holder() -> None:
        await breaker.call(_answer)
        used.set()
        await release.wait()

    async def other() -> None:
        await breaker.call(_answer)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await used.wait()
            with pytest.raises(RuntimeError, match=r"in use by another trio\.run"):
                await trio.to_thread.run_sync(trio.run, other)
            release.set()

    trio.run(main)


# -- faults --------------------------------------------------------------------------------


async def test_failure_rate_is_a_fraction(autojump_clock) -> None:
    chaos = FaultInjector(failure_rate=0.3, latency="2s", seed=3)
    failed = 0
    for _ in range(1000):
        try:
            await chaos.call(_answer)
        except InjectedFaultError:
            failed += 1
    assert 250 <= failed <= 350
    assert chaos.delayed == 1000 and trio.current_time() == pytest.approx(2000)
    with pytest.raises(ValueError, match="not both"):
        FaultInjector(abort_percent=30, failure_rate=0.3)


# -- health --------------------------------------------------------------------------------


async def test_the_seeds_result_object_decides_health(autojump_clock) -> None:
    async def license_validity() -> dict[str, object]:
        return {
            "status": "unhealthy",
            "message": "License expired",
            "timestamp": datetime.datetime.now(),
            "metadata": {"expiryDate": "2026-01-01"},
        }

    manager = HealthCheckManager()
    manager.register_check(
        {
            "name": "license-validity",
            "type": "readiness",
            "critical": True,
            "check": license_validity,
        }
    )
    manager.register_check(HealthCheck("cache", lambda: {"status": "degraded"}, critical=False))
    async with manager:
        readiness = manager.get_readiness()
    assert (readiness.status, readiness.http_status) == ("unhealthy", 503)
    license = next(c for c in readiness.checks if c["name"] == "license-validity")
    assert license["message"] == "License expired"
    assert license["metadata"] == {"expiryDate": "2026-01-01"}
    assert next(c for c in readiness.checks if c["name"] == "cache")["status"] == "degraded"
    assert '"status": "unhealthy"' in readiness.to_json()


async def test_the_seeds_manager_and_common_checks(autojump_clock) -> None:
    answers = iter([False, False, True, True])

    def postgres() -> bool:  # a plain function, as the seed's lambda
        return next(answers, True)

    manager = HealthCheckManager(
        liveness_interval="5s", readiness_interval="3s", failure_threshold=2, success_threshold=2
    )
    manager.register_check(CommonHealthChecks.database("postgres", postgres, True))
    manager.register_check(CommonHealthChecks.memory("memory-usage", 100))
    manager.register_check(CommonHealthChecks.external_service("redis", lambda: True, False))
    await manager.start()
    statuses = [manager.get_readiness().http_status]
    await trio.sleep(0.5)  # read between the rounds, which come every 3 s
    for _ in range(3):
        await trio.sleep(3)
        statuses.append(manager.get_readiness().http_status)
    manager.stop()
    assert statuses == [200, 503, 503, 200]  # two failures to fail, two successes back
    assert manager.get_liveness().status == "healthy"
    assert {c["name"] for c in manager.get_health().checks} == {
        "postgres",
        "memory-usage",
        "redis",
    }


def test_a_check_answer_of_another_shape_is_an_error() -> None:
    assert CheckOutcome.of({"status": "healthy"}).healthy
    with pytest.raises(ValueError, match="status 'fine'"):
        CheckOutcome.of({"status": "fine"})
    with pytest.raises(TypeError, match="answer a bool"):
        CheckOutcome.of("ok")


async def _raise(error: BaseException) -> None:
    raise error


async def _answer() -> str:
    return "ok"
