"""The request path (``Proxy``) as a unit: retries, resends, timeouts, the breaker and the
fallbacks, each decision at the instant the mock clock says.

A caller's request enters through ``LocalExchange``, as the embedded client's do; it
leaves through the real upstream pool, whose connector hands out in-memory HTTP/2
connections to scripted upstreams (tests/support/memory_upstream.py). The same paths
run over real sockets against real servers in tests/integration/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio
import trio.testing

from meshnode.actors.group import UpstreamGroup
from meshnode.events import EventBus
from meshnode.net.listener import Peer
from meshnode.net.local import LocalExchange
from meshnode.net.pool import UpstreamPool
from meshnode.net.stream import REFUSED_STREAM, Data, ResponseHead, Stream, Trailers
from meshnode.policy.models import (
    BalancerPolicy,
    ChaosPolicy,
    CircuitBreakerPolicy,
    ConcurrencyLimitPolicy,
    Endpoint,
    FallbackPolicy,
    HedgePolicy,
    RetryBudgetPolicy,
    RetryPolicy,
    SessionAffinity,
    StaticDiscovery,
    TimeoutPolicy,
    UpstreamPolicy,
    UpstreamSection,
)
from meshnode.policy.units import Address, Duration, LatencyDelay
from meshnode.proxy.forward import Proxy
from meshnode.proxy.routing import RouteTable
from meshnode.resilience.core.latencies import DEFAULT_MIN_SAMPLES
from tests.support.memory_upstream import MemoryUpstream

A = Address("10.0.0.1", 80)  # never dialled: the pool's connector hands out memory streams
B = Address("10.0.0.2", 80)
C = Address("10.0.0.3", 80)
NO_JITTER = RetryPolicy(jitter=0.0, initial_delay=Duration(0.1))
HEDGE_50MS = HedgePolicy(delay=LatencyDelay(seconds=0.05))
ROUND_ROBIN = BalancerPolicy(strategy="round-robin")


def upstream_policy(name: str = "api", *endpoints: Address, **sections: object) -> UpstreamPolicy:
    discovery = StaticDiscovery(endpoints=tuple(Endpoint(a) for a in endpoints or (A, B)))
    return attrs.evolve(UpstreamPolicy(UpstreamSection(name), discovery), **sections)


Script = Callable[[Address, Stream], Awaitable[None]]


def status(code: int, **headers: str) -> Script:
    async def answer(address: Address, stream: Stream) -> None:
        extra = [
            (name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()
        ]
        await stream.send_headers([(b":status", str(code).encode()), *extra], end_stream=True)

    return answer


async def silence(address: Address, stream: Stream) -> None:
    """An upstream that never answers."""


async def refuse(address: Address, stream: Stream) -> None:
    stream.reset(REFUSED_STREAM)


class Mesh:
    """One ``Proxy`` with its groups, pool and scripted upstream: each request the upstream
    receives is answered by the next script (the last one answers the rest)."""

    def __init__(self, nursery: trio.Nursery, scripts: list[Script]) -> None:
        self.nursery = nursery
        self.scripts = scripts
        self.upstream = MemoryUpstream(nursery, answer=self._answer)
        self.pool = UpstreamPool(nursery, connector=self.upstream.connect)
        self.proxy = Proxy(RouteTable.build({}), {}, self.pool)
        self.groups: dict[str, UpstreamGroup] = {}

    async def _answer(self, address: Address, stream: Stream) -> None:
        script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        await script(address, stream)

    async def add(self, policy: UpstreamPolicy) -> UpstreamGroup:
        group = UpstreamGroup(policy, EventBus())
        await self.nursery.start(group.run)
        self.groups[policy.name] = group
        routes = RouteTable.build({name: g.policy for name, g in self.groups.items()})
        self.proxy.swap(routes, self.groups)
        return group

    async def call(
        self,
        method: str = "GET",
        authority: str = "api",
        body: bytes | None = None,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request through the proxy: the status, head and body the caller receives."""
        headers = [
            (b":method", method.encode()),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            *extra,
        ]
        exchange = LocalExchange(headers, end_stream=body is None)
        self.nursery.start_soon(self.proxy.handle, exchange.server, Peer(b"127.0.0.1"))
        if body is not None:
            await exchange.client.send_data(body, end_stream=True)
        head = await exchange.client.receive()
        assert isinstance(head, ResponseHead)
        received = b""
        while isinstance(item := await exchange.client.receive(), Data):
            received += item.data
        assert not isinstance(item, Trailers)
        return head.status, dict(head.headers), received


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    mock_clock.autojump_threshold = 0
    return mock_clock


async def test_a_503_is_retried_after_the_backoff_on_the_other_endpoint(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(503), status(200)])
    same_endpoint_each_time = BalancerPolicy(strategy="ip-hash")
    group = await mesh.add(upstream_policy(retry=NO_JITTER, balancer=same_endpoint_each_time))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.1)  # initial_delay, no jitter
    first, retried = mesh.upstream.addresses
    assert first != retried  # the retry avoided the endpoint that failed
    assert (group.stats.retries["retried"], group.stats.tries["recovered"]) == (1, 1)


async def test_retry_after_sets_the_delay_within_max_delay(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(503, retry_after="3"), status(200)])
    retry = attrs.evolve(NO_JITTER, max_delay=Duration(2))
    await mesh.add(upstream_policy(retry=retry))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(2.0)


async def test_a_post_is_not_retried_on_a_503(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(503), status(200)])
    group = await mesh.add(upstream_policy(retry=NO_JITTER))
    assert (await mesh.call("POST", body=b"x"))[0] == 503
    assert len(mesh.upstream.requests) == 1
    assert group.stats.retries["retried"] == 0


async def test_exhausted_retries_relay_the_last_answer(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(503)])
    group = await mesh.add(upstream_policy(retry=attrs.evolve(NO_JITTER, max_retries=2)))
    answer, head, _ = await mesh.call()
    assert answer == 503 and b"x-meshnode-error" not in head  # the upstream's own answer
    assert len(mesh.upstream.requests) == 3
    assert group.stats.retries["retried"] == 2


async def test_a_refused_stream_is_sent_again_at_once_free_of_the_retry_policy(
    nursery, clock
) -> None:
    mesh = Mesh(nursery, [refuse, status(200)])
    group = await mesh.add(upstream_policy())  # no [retry] at all
    started = trio.current_time()
    assert (await mesh.call("POST", body=b"order"))[0] == 200
    assert trio.current_time() == started  # no backoff
    assert group.stats.resent["refused-stream"] == 1
    assert group.stats.tries["total"] == 1  # a resend is not a try the policy counts


async def test_a_per_try_timeout_fails_the_try_and_a_retry_answers(nursery, clock) -> None:
    mesh = Mesh(nursery, [silence, status(200)])
    retry = attrs.evolve(NO_JITTER, retry_on=("timeout",))
    timeouts = TimeoutPolicy(per_try=Duration(0.5), request=Duration(5))
    await mesh.add(upstream_policy(retry=retry, timeout=timeouts))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.6)  # per-try, then the backoff
    assert mesh.upstream.requests[0].error is not None  # the first try was cancelled upstream


async def test_the_request_timeout_ends_the_request_with_504(nursery, clock) -> None:
    mesh = Mesh(nursery, [silence])
    await mesh.add(upstream_policy(timeout=TimeoutPolicy(request=Duration(2))))
    started = trio.current_time()
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-error"]) == (504, b"timeout")
    assert trio.current_time() - started == pytest.approx(2.0)


async def test_an_open_breaker_answers_without_touching_the_upstream(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(500)])
    breaker = CircuitBreakerPolicy(failure_threshold=2, reset_timeout=Duration(10))
    group = await mesh.add(upstream_policy(circuit_breaker=breaker))
    assert [(await mesh.call())[0] for _ in range(2)] == [500, 500]
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-error"]) == (503, b"circuit-open")
    assert len(mesh.upstream.requests) == 2
    assert group.stats.breaker_rejected == 1
    clock.jump(10)  # half-open: one probe request goes through, and closes it
    mesh.scripts[:] = [status(200)]
    assert (await mesh.call())[0] == 200
    assert len(mesh.upstream.requests) == 3


async def test_a_static_fallback_answers_once_retries_are_exhausted(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(503)])
    plan = FallbackPolicy("static", on=("retries-exhausted",), status=200, body="cached")
    group = await mesh.add(upstream_policy(retry=NO_JITTER, fallback=plan))
    answer, head, body = await mesh.call()
    assert (answer, head[b"x-meshnode-fallback"], body) == (200, b"static", b"cached")
    assert group.stats.fallbacks["static"] == 1


async def test_a_stale_cache_fallback_serves_the_last_good_answer(nursery, clock) -> None:
    async def fresh(address: Address, stream: Stream) -> None:
        await stream.send_headers([(b":status", b"200")])
        await stream.send_data(b"good", end_stream=True)

    mesh = Mesh(nursery, [fresh, status(500)])
    plan = FallbackPolicy("stale-cache", on=("5xx",), max_age=Duration(60))
    await mesh.add(upstream_policy(fallback=plan))
    assert (await mesh.call())[2] == b"good"
    clock.jump(5)
    answer, head, body = await mesh.call()
    assert (answer, body, head[b"x-meshnode-fallback"], head[b"age"]) == (
        200,
        b"good",
        b"stale-cache",
        b"5",
    )


async def test_an_upstream_fallback_runs_the_request_path_again_elsewhere(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(500), status(200)])
    plan = FallbackPolicy("upstream", on=("5xx",), upstream="spare")
    api = await mesh.add(upstream_policy("api", A, fallback=plan))
    await mesh.add(upstream_policy("spare", B))
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-fallback"]) == (200, b"upstream")
    assert mesh.upstream.addresses == [A, B]
    assert api.stats.fallbacks["upstream"] == 1


@pytest.mark.parametrize("hedged", [False, True])
async def test_a_caller_reset_cancels_the_upstream_try_at_once(nursery, clock, hedged) -> None:
    mesh = Mesh(nursery, [silence])
    hedge = HEDGE_50MS if hedged else None  # reset before the hedge delay
    group = await mesh.add(
        upstream_policy(timeout=TimeoutPolicy(request=Duration(30)), hedge=hedge)
    )
    exchange = LocalExchange(
        [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"api")],
        end_stream=True,
    )
    nursery.start_soon(mesh.proxy.handle, exchange.server, Peer(b"127.0.0.1"))
    await trio.testing.wait_all_tasks_blocked()
    assert group.picker.in_flight == 1
    started = trio.current_time()
    exchange.client.reset(0x8)
    await trio.testing.wait_all_tasks_blocked()
    assert group.picker.in_flight == 0 and trio.current_time() == started
    assert mesh.upstream.requests[0].error is not None


async def test_a_session_cookie_keeps_a_caller_on_its_endpoint(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(200)])
    affinity = BalancerPolicy(session_affinity=SessionAffinity(cookie="sid"))
    await mesh.add(upstream_policy(balancer=affinity))
    for sid in (b"1", b"2", b"1", b"2", b"1"):
        await mesh.call(extra=((b"cookie", b"theme=dark; sid=" + sid),))
    assert len(set(mesh.upstream.addresses)) == 2
    assert mesh.upstream.addresses[0::2] == [mesh.upstream.addresses[0]] * 3
    assert mesh.upstream.addresses[1::2] == [mesh.upstream.addresses[1]] * 2


def late(code: int, after: float) -> Script:
    """Answer ``code`` after ``after`` seconds, unless the proxy cancelled the stream."""

    async def answer(address: Address, stream: Stream) -> None:
        await trio.sleep(after)
        if stream.error is None:
            await stream.send_headers([(b":status", str(code).encode())], end_stream=True)

    return answer


async def test_a_retry_that_cannot_finish_in_time_is_skipped_and_the_answer_relayed(
    nursery, clock
) -> None:
    mesh = Mesh(nursery, [late(503, 0.3), status(200)])
    retry = attrs.evolve(NO_JITTER, initial_delay=Duration(0.01))
    group = await mesh.add(upstream_policy(retry=retry, timeout=TimeoutPolicy(Duration(0.5))))
    started = trio.current_time()
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-retry-skipped"]) == (503, b"deadline")
    assert trio.current_time() - started == pytest.approx(0.3)  # not a 504 at 0.5 s
    assert len(mesh.upstream.requests) == 1
    assert group.stats.retries["deadline-skipped"] == 1


async def test_a_fast_failure_is_still_retried_within_the_deadline(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(503, 0.05), status(200)])
    await mesh.add(upstream_policy(retry=NO_JITTER, timeout=TimeoutPolicy(Duration(0.5))))
    answer, head, _ = await mesh.call()
    assert answer == 200 and b"x-meshnode-retry-skipped" not in head


async def test_grpc_timeout_is_honoured_and_the_upstream_told_the_time_left(nursery, clock) -> None:
    seen: list[bytes] = []

    async def recording(address: Address, stream: Stream) -> None:
        seen.append(dict(stream.headers or [])[b"grpc-timeout"])  # and never answers

    mesh = Mesh(nursery, [recording])
    await mesh.add(upstream_policy(timeout=TimeoutPolicy(Duration(10))))
    grpc = ((b"content-type", b"application/grpc"), (b"grpc-timeout", b"1500m"))
    started = trio.current_time()
    answer, head, _ = await mesh.call("POST", body=b"", extra=grpc)
    assert (answer, head[b"x-meshnode-error"]) == (504, b"timeout")
    assert trio.current_time() - started == pytest.approx(1.5)  # the caller's, tighter
    assert seen == [b"1500m"]


async def test_a_larger_grpc_timeout_is_replaced_by_the_time_actually_left(nursery, clock) -> None:
    seen: list[bytes] = []

    async def recording(address: Address, stream: Stream) -> None:
        seen.append(dict(stream.headers or [])[b"grpc-timeout"])
        await stream.send_headers([(b":status", b"200")], end_stream=True)

    mesh = Mesh(nursery, [recording])
    await mesh.add(upstream_policy(timeout=TimeoutPolicy(Duration(2))))
    grpc = ((b"content-type", b"application/grpc+proto"), (b"grpc-timeout", b"1H"))
    assert (await mesh.call("POST", body=b"", extra=grpc))[0] == 200
    assert seen == [b"2000m"]


async def test_over_the_concurrency_limit_a_request_is_refused_without_touching_the_upstream(
    nursery, clock
) -> None:
    release = trio.Event()

    async def held(address: Address, stream: Stream) -> None:
        await release.wait()
        await stream.send_headers([(b":status", b"200")], end_stream=True)

    mesh = Mesh(nursery, [held])
    limit = ConcurrencyLimitPolicy(algorithm="fixed", initial_limit=1)
    group = await mesh.add(upstream_policy(concurrency_limit=limit))
    first: list[int] = []

    async def call_first() -> None:
        first.append((await mesh.call())[0])

    nursery.start_soon(call_first)
    await trio.testing.wait_all_tasks_blocked()
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-error"]) == (503, b"concurrency-limited")
    assert len(mesh.upstream.requests) == 1
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert first == [200] and group.stats.rejected["concurrency-limited"] == 1
    assert group.report()["concurrency_limit"]["in_flight"] == 0


async def test_with_a_queue_timeout_a_request_waits_for_room(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(200, 0.2)])
    limit = ConcurrencyLimitPolicy(algorithm="fixed", initial_limit=1, queue_timeout=Duration(1))
    await mesh.add(upstream_policy(concurrency_limit=limit))
    answers: list[int] = []

    async def one() -> None:
        answers.append((await mesh.call())[0])

    started = trio.current_time()
    async with trio.open_nursery() as callers:
        callers.start_soon(one)
        callers.start_soon(one)
    assert answers == [200, 200]
    assert trio.current_time() - started == pytest.approx(0.4)  # one after the other


WAITS_FOR_AN_ENDPOINT_SLOT = {
    "balancer": BalancerPolicy(max_connections_per_instance=1, queue_timeout=Duration(2))
}
WAITS_UNDER_THE_CONCURRENCY_LIMIT = {
    "concurrency_limit": ConcurrencyLimitPolicy(
        algorithm="fixed", initial_limit=1, queue_timeout=Duration(2)
    )
}


@pytest.mark.parametrize(
    "waiting",
    [WAITS_FOR_AN_ENDPOINT_SLOT, WAITS_UNDER_THE_CONCURRENCY_LIMIT],
    ids=["slot", "limit"],
)
async def test_the_per_try_timeout_counts_from_when_the_try_goes_not_from_the_wait(
    nursery, clock, waiting
) -> None:
    """The second request waits 0.4 s for the first to finish, then its own try takes
    0.4 s: within its per-try 0.5 s, though 0.8 s after it came."""
    mesh = Mesh(nursery, [late(200, 0.4)])
    timeouts = TimeoutPolicy(per_try=Duration(0.5), request=Duration(5))
    await mesh.add(upstream_policy("api", A, timeout=timeouts, **waiting))
    answered: list[tuple[int, float]] = []
    started = trio.current_time()

    async def one() -> None:
        answer = (await mesh.call())[0]
        answered.append((answer, trio.current_time() - started))

    async with trio.open_nursery() as callers:
        callers.start_soon(one)
        callers.start_soon(one)
    assert answered == [(200, pytest.approx(0.4)), (200, pytest.approx(0.8))]


async def test_a_reload_of_chaos_draws_from_the_new_plan_at_once(nursery, clock) -> None:
    mesh = Mesh(nursery, [status(200)])
    group = await mesh.add(upstream_policy(chaos=ChaosPolicy(abort_percent=0.0)))
    assert (await mesh.call())[0] == 200
    always = ChaosPolicy(abort_percent=100.0, abort_status=418)
    await group.update_policy(attrs.evolve(group.policy, chaos=always))
    answer, head, _ = await mesh.call()
    assert (answer, head[b"x-meshnode-error"]) == (418, b"chaos-abort")
    await group.update_policy(attrs.evolve(group.policy, chaos=None))
    assert (await mesh.call())[0] == 200


async def test_a_slow_try_is_hedged_on_another_endpoint_and_the_first_head_wins(
    nursery, clock
) -> None:
    mesh = Mesh(nursery, [late(200, 1.0), late(200, 0.01)])
    group = await mesh.add(upstream_policy(hedge=HEDGE_50MS, balancer=ROUND_ROBIN))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.06)
    assert sorted(map(str, mesh.upstream.addresses)) == [str(A), str(B)]
    await trio.testing.wait_all_tasks_blocked()
    slow = mesh.upstream.requests[0]
    assert slow.error is not None  # the losing try was cancelled upstream (RST_STREAM)
    assert group.stats.hedges == {"sent": 1, "won": 1, "budget-exhausted": 0, "no-endpoint": 0}
    assert group.picker.in_flight == 0


async def test_a_try_that_answers_within_the_delay_is_not_hedged(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(200, 0.04)])
    group = await mesh.add(upstream_policy(hedge=HEDGE_50MS))
    assert (await mesh.call())[0] == 200
    assert len(mesh.upstream.requests) == 1 and group.stats.hedges["sent"] == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_request_that_is_not_idempotent_is_never_hedged(nursery, clock, method) -> None:
    mesh = Mesh(nursery, [late(200, 1.0)])
    group = await mesh.add(upstream_policy(hedge=HEDGE_50MS))
    started = trio.current_time()
    assert (await mesh.call(method))[0] == 200
    assert trio.current_time() - started == pytest.approx(1.0)
    assert len(mesh.upstream.requests) == 1 and group.stats.hedges["sent"] == 0


async def test_a_head_a_retry_would_follow_waits_while_the_other_try_runs(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(200, 1.0), status(503)])
    policy = upstream_policy(hedge=HEDGE_50MS, balancer=ROUND_ROBIN, retry=NO_JITTER)
    group = await mesh.add(policy)
    started = trio.current_time()
    assert (await mesh.call())[0] == 200  # the first try's, not the hedge's 503
    assert trio.current_time() - started == pytest.approx(1.0)
    assert len(mesh.upstream.requests) == 2
    assert group.stats.hedges["won"] == 0 and group.stats.retries["retried"] == 0


async def test_when_every_hedged_try_fails_a_retry_follows(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(503, 0.2), status(503), status(200)])
    policy = upstream_policy(hedge=HEDGE_50MS, balancer=ROUND_ROBIN, retry=NO_JITTER)
    group = await mesh.add(policy)
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    # the hedge's 503 waited for the first try's, then the backoff of 0.1 s, then the retry
    assert trio.current_time() - started == pytest.approx(0.3)
    assert len(mesh.upstream.requests) == 3
    assert group.stats.retries["retried"] == 1 and group.stats.tries["total"] == 3


async def test_hedges_spend_the_retry_budget(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(200, 1.0)])
    no_budget = attrs.evolve(NO_JITTER, budget=RetryBudgetPolicy(ratio=0.0, min_per_second=0.0))
    group = await mesh.add(upstream_policy(hedge=HEDGE_50MS, retry=no_budget))
    assert (await mesh.call())[0] == 200
    assert len(mesh.upstream.requests) == 1
    assert group.stats.hedges["budget-exhausted"] == 1 and group.stats.hedges["sent"] == 0


async def test_a_percentile_delay_follows_the_upstreams_recent_latencies(nursery, clock) -> None:
    fast, enough = late(200, 0.01), DEFAULT_MIN_SAMPLES
    mesh = Mesh(nursery, [fast] * enough + [late(200, 1.0), fast])
    p90 = HedgePolicy(delay=LatencyDelay(percentile=90.0))
    group = await mesh.add(upstream_policy(hedge=p90, balancer=ROUND_ROBIN))
    for _ in range(enough):  # no hedge while the latencies are too few to have a tail
        assert (await mesh.call())[0] == 200
    assert group.stats.hedges["sent"] == 0
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.02)  # hedged at p90: 10 ms
    assert group.stats.hedges["won"] == 1


async def test_a_per_try_timeout_sooner_than_the_hedge_delay_ends_the_try_first(
    nursery, clock
) -> None:
    mesh = Mesh(nursery, [silence, status(200)])
    retry = attrs.evolve(NO_JITTER, retry_on=("timeout",))
    timeouts = TimeoutPolicy(request=Duration(5), per_try=Duration(0.03))
    group = await mesh.add(upstream_policy(hedge=HEDGE_50MS, retry=retry, timeout=timeouts))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.13)  # 30 ms, then 100 ms backoff
    assert group.stats.hedges["sent"] == 0 and group.stats.retries["retried"] == 1
    assert group.picker.in_flight == 0


async def test_with_max_hedges_two_a_second_hedge_goes_once_the_delay_passes_again(
    nursery, clock
) -> None:
    mesh = Mesh(nursery, [late(200, 1.0), late(200, 1.0), late(200, 0.01)])
    two = attrs.evolve(HEDGE_50MS, max_hedges=2)
    group = await mesh.add(upstream_policy("api", A, B, C, hedge=two, balancer=ROUND_ROBIN))
    started = trio.current_time()
    assert (await mesh.call())[0] == 200
    assert trio.current_time() - started == pytest.approx(0.11)  # hedges at 50 and 100 ms
    assert len(set(mesh.upstream.addresses)) == 3
    assert group.stats.hedges["sent"] == 2 and group.stats.hedges["won"] == 1
    await trio.testing.wait_all_tasks_blocked()
    assert [stream.error is not None for stream in mesh.upstream.requests[:2]] == [True, True]
    assert group.picker.in_flight == 0


async def test_a_hedge_that_finds_every_endpoint_full_is_held_back(nursery, clock) -> None:
    mesh = Mesh(nursery, [late(200, 1.0)])
    one_at_a_time = BalancerPolicy(max_connections_per_instance=1)
    group = await mesh.add(upstream_policy("api", A, hedge=HEDGE_50MS, balancer=one_at_a_time))
    assert (await mesh.call())[0] == 200
    assert len(mesh.upstream.requests) == 1
    assert group.stats.hedges["no-endpoint"] == 1 and group.stats.hedges["sent"] == 0
