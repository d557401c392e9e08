"""Balancing, affinity, health checks and ejection with real upstreams and real clients."""

from __future__ import annotations

import collections

import grpc
import trio

from meshnode.events import EndpointHealthChanged
from tests.conftest import require, upstream_toml, write_policies
from tests.support.client import admin, get
from tests.support.grpc_server import grpc_server, unary
from tests.support.tunable import TunableUpstream


async def upstreams(nursery, *names: str) -> list[tuple[TunableUpstream, str]]:
    started = []
    for name in names:
        upstream = TunableUpstream(name)
        started.append((upstream, await nursery.start(upstream.serve)))
    return started


def policy(*addresses: str, extra: str = "", weights: tuple[int, ...] = ()) -> str:
    if weights:
        listed = ", ".join(
            f'{{ address = "{a}", weight = {w} }}' for a, w in zip(addresses, weights, strict=True)
        )
        return upstream_toml("api", "x:1", extra=extra).replace(
            'endpoints = ["x:1"]', f"endpoints = [{listed}]"
        )
    return upstream_toml("api", *addresses, extra=extra)


async def h2load(address, requests: int, clients: int = 4, streams: int = 10, *headers: str) -> str:
    result = await trio.run_process(
        [
            require("h2load"),
            "-n",
            str(requests),
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-H",
            ":authority: api",
            *headers,
            f"http://{address}/",
        ],
        capture_stdout=True,
        check=True,
    )
    out = result.stdout.decode()
    assert f"{requests} succeeded, 0 failed" in out, out
    return out


async def test_round_robin_is_even(tmp_path, nursery, running) -> None:
    servers = await upstreams(nursery, "a", "b", "c")
    _, addresses = await running(
        write_policies(tmp_path, {"api": policy(*(a for _, a in servers))})
    )
    await h2load(addresses.outbound[0], 3000)
    assert [s.requests for s, _ in servers] == [1000, 1000, 1000]


async def test_weighted_round_robin_proportions(tmp_path, nursery, running) -> None:
    servers = await upstreams(nursery, "a", "b")
    extra = '[balancer]\nstrategy = "weighted-round-robin"\n'
    text = policy(*(a for _, a in servers), extra=extra, weights=(3, 1))
    _, addresses = await running(write_policies(tmp_path, {"api": text}))
    await h2load(addresses.outbound[0], 10_000)
    share = servers[0][0].requests / 10_000
    assert abs(share - 0.75) <= 0.02, share


async def test_least_connections_avoids_an_endpoint_holding_slow_requests(
    tmp_path, nursery, running
) -> None:
    (slow, slow_address), (fast, fast_address) = await upstreams(nursery, "slow", "fast")
    slow.delay = 0.3
    extra = '[balancer]\nstrategy = "least-connections"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": policy(slow_address, fast_address, extra=extra)})
    )
    await h2load(addresses.outbound[0], 400, 4, 5)
    assert slow.requests < 0.25 * 400, (slow.requests, fast.requests)


async def test_least_response_time_leaves_a_slow_endpoint_and_comes_back(
    tmp_path, nursery, running
) -> None:
    (a, a_address), (b, b_address) = await upstreams(nursery, "a", "b")
    extra = '[balancer]\nstrategy = "least-response-time"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": policy(a_address, b_address, extra=extra)})
    )
    a.delay = 0.05
    await h2load(addresses.outbound[0], 300, 2, 2)
    assert a.requests < 0.2 * 300, (a.requests, b.requests)
    a.delay, b.delay = 0.0, 0.05
    before = a.requests
    await h2load(addresses.outbound[0], 600, 2, 2)
    assert a.requests - before > 0.6 * 600  # the recovered endpoint takes the traffic again


async def test_session_affinity_sticks_and_can_be_cleared(tmp_path, nursery, running) -> None:
    servers = await upstreams(nursery, "a", "b", "c")
    extra = '[balancer]\nsession_affinity = { header = "x-client-id", ttl = "30m" }\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": policy(*(a for _, a in servers), extra=extra)})
    )
    answers = {
        (await get(addresses.outbound[0], "api", "/", "-H", "x-client-id: alice"))[1]
        for _ in range(20)
    }
    assert len(answers) == 1
    status, answer = await admin(addresses.admin[0], "DELETE", "/admin/sessions/alice")
    assert (status, answer) == (200, {"client": "alice", "forgotten": 1})
    assert (await admin(addresses.admin[0], "DELETE", "/admin/sessions/alice"))[1]["forgotten"] == 0


async def test_active_checks_take_an_endpoint_out_and_back(tmp_path, nursery, running) -> None:
    (a, a_address), (_, b_address) = await upstreams(nursery, "a", "b")
    extra = (
        '[health_check]\npath = "/health"\ninterval = "100ms"\ntimeout = "500ms"\n'
        "unhealthy_threshold = 2\nhealthy_threshold = 2\n"
    )
    node, addresses = await running(
        write_policies(tmp_path, {"api": policy(a_address, b_address, extra=extra)})
    )
    with node.bus.subscribe() as events:
        a.health_status = 503
        with trio.fail_after(10):
            event = await events.receive()
        assert isinstance(event, EndpointHealthChanged)
        assert (event.endpoint, event.to, event.reason) == (
            a_address,
            "unhealthy",
            "status 503, expected 200-399",
        )
        before = a.requests
        for _ in range(10):
            assert (await get(addresses.outbound[0], "api"))[1] == b"b"
        assert a.requests == before
        a.health_status = 200
        with trio.fail_after(10):
            event = await events.receive()
        assert (event.endpoint, event.to) == (a_address, "healthy")  # type: ignore[attr-defined]
    answers = collections.Counter([(await get(addresses.outbound[0], "api"))[1] for _ in range(10)])
    assert answers[b"a"] == 5


async def test_failing_endpoints_are_ejected(tmp_path, nursery, running) -> None:
    (a, a_address), (_, b_address) = await upstreams(nursery, "a", "b")
    a.status = 503
    extra = '[outlier_detection]\nconsecutive_failures = 3\nbase_ejection_time = "30s"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": policy(a_address, b_address, extra=extra)})
    )
    for _ in range(6):
        await get(addresses.outbound[0], "api")
    assert a.requests == 3
    for _ in range(10):
        assert await get(addresses.outbound[0], "api") == (200, b"b")
    _, report = await admin(addresses.admin[0], "GET", "/admin/upstreams")
    endpoint = report["upstreams"]["api"]["endpoints"][0]
    assert (endpoint["ejected"], endpoint["ejections"]) == (True, 1)


async def test_panic_threshold_and_critical_readiness(tmp_path, nursery, running) -> None:
    (a, a_address), (b, b_address) = await upstreams(nursery, "a", "b")
    checks = (
        '[health_check]\npath = "/health"\ninterval = "100ms"\nunhealthy_threshold = 1\n'
        "healthy_threshold = 1\n"
    )
    critical = 'tls = "none"\ncritical = true'
    panicking = policy(a_address, b_address, extra=checks).replace('tls = "none"', critical)
    node, addresses = await running(write_policies(tmp_path, {"api": panicking}))
    a.health_status = b.health_status = 503
    with trio.fail_after(10):
        while (
            any(
                node.groups["api"].picker.health.get(addr, True)
                for addr in node.groups["api"].picker.health
            )
            or len(node.groups["api"].picker.health) < 2
        ):
            await trio.sleep(0.05)
    assert (await get(addresses.outbound[0], "api"))[0] == 200  # panic: served anyway
    status, health = await admin(addresses.admin[0], "GET", "/health/ready")
    assert status == 503
    check = next(c for c in health["checks"] if c["name"] == "upstream:api")
    assert check["message"] == "0 of 2 endpoint(s) healthy"
    write_policies(tmp_path, {"api": panicking + "[balancer]\npanic_threshold = 0\n"})
    assert (await node.reload("test")).applied
    status, _ = await get(addresses.outbound[0], "api")
    assert status == 503  # no panic: no-healthy-endpoints
    a.health_status = 200
    with trio.fail_after(10):
        while (await admin(addresses.admin[0], "GET", "/health/ready"))[0] != 200:
            await trio.sleep(0.05)


async def test_grpc_health_checking_protocol(tmp_path, nursery, running) -> None:
    """A real grpcio server answering grpc.health.v1.Health/Check (SERVING, then NOT_SERVING)."""
    serving = {"status": 1}

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        return bytes([0x08, serving["status"]])  # HealthCheckResponse{status}

    with grpc_server("grpc.health.v1.Health", {"Check": unary(check)}, workers=2) as health:
        extra = (
            '[health_check]\nkind = "grpc"\ninterval = "100ms"\nunhealthy_threshold = 1\n'
            "healthy_threshold = 1\n"
        )
        node, _ = await running(write_policies(tmp_path, {"api": policy(health, extra=extra)}))
        group = node.groups["api"]
        address = group.picker.endpoints.endpoints[0].address
        with node.bus.subscribe() as events:
            serving["status"] = 2  # NOT_SERVING
            with trio.fail_after(10):
                event = await events.receive()
            assert (event.to, event.reason) == ("unhealthy", "not SERVING")  # type: ignore[attr-defined]
            serving["status"] = 1
            with trio.fail_after(10):
                event = await events.receive()
            assert (event.to, event.reason) == ("healthy", "SERVING")  # type: ignore[attr-defined]
        assert group.picker.health[address] is True


async def test_ip_hash_keeps_each_caller_and_moves_few(tmp_path, nursery, running) -> None:
    servers = await upstreams(nursery, "a", "b", "c")
    addresses_of = [a for _, a in servers]
    extra = '[balancer]\nstrategy = "ip-hash"\n'
    node, addresses = await running(
        write_policies(tmp_path, {"api": policy(*addresses_of, extra=extra)})
    )
    callers = [f"127.0.0.{n}" for n in range(2, 32)]

    async def placement() -> dict[str, bytes]:
        placed = {}
        for caller in callers:
            result = await trio.run_process(
                [
                    require("curl"),
                    "-s",
                    "--http2-prior-knowledge",
                    "--interface",
                    caller,
                    "-H",
                    "host: api",
                    f"http://{addresses.outbound[0]}/",
                ],
                capture_stdout=True,
                check=True,
            )
            placed[caller] = result.stdout
        return placed

    first = await placement()
    assert first == await placement()  # each caller stays where it was
    assert len(set(first.values())) == 3
    write_policies(tmp_path, {"api": policy(*addresses_of[1:], extra=extra)})  # remove "a"
    assert (await node.reload("test")).applied
    second = await placement()
    moved = [c for c in callers if first[c] != second[c]]
    assert all(first[c] == b"a" for c in moved)  # only a's callers moved
