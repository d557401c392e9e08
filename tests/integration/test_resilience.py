"""Resilience on real sockets: retries, the breaker, budgets, limits, faults and fallbacks."""

from __future__ import annotations

import json
import time

import h2.errors
import h2.events
import pytest
import trio

from meshnode.events import BreakerStateChanged
from tests.conftest import answering, upstream_toml, write_policies
from tests.support.client import admin, fetch, get
from tests.support.rawh2 import RawH2Server, respond


def failing_first(
    count: int, how: str = "503", headers=(), *, after_body: bool = False
) -> RawH2Server:
    """An upstream that fails its first ``count`` requests (a status, or "reset"), then answers."""
    server = RawH2Server(lambda conn, event: None, after_body=after_body)

    def script(conn, event: h2.events.RequestReceived) -> None:
        if server.requests > count:
            respond(conn, event.stream_id, b"recovered")
        elif how == "reset":
            conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            conn.send_headers(event.stream_id, [(":status", how), *headers], end_stream=True)

    server.script = script
    return server


RETRY = """
[retry]
max_retries = 3
initial_delay = "10ms"
max_delay = "50ms"
retry_on = ["reset", "503", "429", "unavailable"]
"""


async def serve(nursery, server: RawH2Server) -> str:
    return f"127.0.0.1:{await nursery.start(server.serve)}"


@pytest.mark.parametrize("how", ["503", "reset"])
async def test_a_flaky_upstream_is_recovered_by_retries(tmp_path, nursery, running, how) -> None:
    server = failing_first(2, how)
    address = await serve(nursery, server)
    node, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=RETRY)})
    )
    assert await get(addresses.outbound[0], "api") == (200, b"recovered")
    assert server.requests == 3
    assert node.groups["api"].stats.retries["retried"] == 2


async def test_without_retries_the_failure_reaches_the_client(tmp_path, nursery, running) -> None:
    server = failing_first(1)
    address = await serve(nursery, server)
    _, addresses = await running(write_policies(tmp_path, {"api": upstream_toml("api", address)}))
    assert (await get(addresses.outbound[0], "api"))[0] == 503
    assert server.requests == 1


async def test_a_post_is_retried_only_with_an_idempotency_key(tmp_path, nursery, running) -> None:
    server = failing_first(2, after_body=True)
    address = await serve(nursery, server)
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=RETRY)})
    )
    assert (await get(addresses.outbound[0], "api", "/", "-d", "payload"))[0] == 503
    assert server.requests == 1
    status, body = await get(
        addresses.outbound[0], "api", "/", "-d", "payload", "-H", "idempotency-key: k-1"
    )
    assert (status, body) == (200, b"recovered")
    assert server.requests == 3  # the keyed POST failed once and was sent again
    assert server.body_received == b"payload" * 3  # its body replayed whole


async def test_a_body_over_the_replay_buffer_is_not_retried(tmp_path, nursery, running) -> None:
    server = failing_first(1, after_body=True)  # answers once it has read the 4 KiB
    address = await serve(nursery, server)
    policy = upstream_toml(
        "api", address, extra=RETRY.replace("[retry]", '[retry]\nbuffer = "1KiB"')
    )
    _, addresses = await running(write_policies(tmp_path, {"api": policy}))
    large = tmp_path / "large"
    large.write_bytes(b"x" * 4096)
    status, _ = await get(
        addresses.outbound[0], "api", "/", "--data-binary", f"@{large}", "-H", "idempotency-key: k"
    )
    assert (status, server.requests) == (503, 1)


async def test_grpc_unavailable_in_a_trailers_only_answer_is_retried(
    tmp_path, nursery, running
) -> None:
    server = failing_first(1, "200", headers=[("grpc-status", "14")])
    address = await serve(nursery, server)
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=RETRY)})
    )
    assert await get(addresses.outbound[0], "api") == (200, b"recovered")
    assert server.requests == 2


async def test_retry_after_is_honoured(tmp_path, nursery, running) -> None:
    server = failing_first(1, "429", headers=[("retry-after", "1")])
    address = await serve(nursery, server)
    extra = RETRY.replace('max_delay = "50ms"', 'max_delay = "5s"')
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    started = time.monotonic()
    assert await get(addresses.outbound[0], "api") == (200, b"recovered")
    assert time.monotonic() - started >= 1.0  # waited what the upstream asked, not 10 ms


async def test_a_slow_try_is_abandoned_and_retried(tmp_path, nursery, running) -> None:
    server = RawH2Server(lambda conn, event: None)
    server.script = lambda conn, event: (
        respond(conn, event.stream_id, b"second try") if server.requests > 1 else None
    )
    address = await serve(nursery, server)
    extra = RETRY.replace('"reset",', '"reset", "timeout",') + '[timeout]\nper_try = "200ms"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    assert await get(addresses.outbound[0], "api") == (200, b"second try")
    assert server.resets_received == [1]  # the abandoned try was cancelled upstream


async def test_a_503_storm_opens_the_breaker_and_trials_close_it(
    tmp_path, nursery, running
) -> None:
    server = failing_first(5)
    address = await serve(nursery, server)
    extra = """
[circuit_breaker]
failure_threshold = 5
reset_timeout = "500ms"
half_open_max_requests = 2
"""
    node, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    with node.bus.subscribe() as events:
        for _ in range(5):
            assert (await get(addresses.outbound[0], "api"))[0] == 503
        status, headers, body = await fetch(addresses.outbound[0], "api")
        assert (status, headers["x-meshnode-error"]) == (503, "circuit-open")
        assert json.loads(body)["upstream"] == "api"
        assert server.requests == 5  # the rejected request never reached the upstream
        opened = await events.receive()
        await trio.sleep(0.6)
        assert await get(addresses.outbound[0], "api") == (200, b"recovered")
        assert await get(addresses.outbound[0], "api") == (200, b"recovered")
        half_open, closed = await events.receive(), await events.receive()
    assert all(isinstance(e, BreakerStateChanged) for e in (opened, half_open, closed))
    assert [(e.from_, e.to) for e in (opened, half_open, closed)] == [  # type: ignore[attr-defined]
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert opened.to_json()["from"] == "closed"
    _, report = await admin(addresses.admin[0], "GET", "/admin/upstreams")
    breaker = report["upstreams"]["api"]["breaker"]
    assert (breaker["state"], breaker["rejected_requests"]) == ("closed", 1)


async def test_operators_can_force_a_breaker(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"fine")
    _, addresses = await running(write_policies(tmp_path, {"api": upstream_toml("api", address)}))
    status, answer = await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=open")
    assert (status, answer["state"], answer["override"]) == (200, "open", "open")
    assert (await fetch(addresses.outbound[0], "api"))[1]["x-meshnode-error"] == "circuit-open"
    await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=auto")
    assert await get(addresses.outbound[0], "api") == (200, b"fine")
    assert (await admin(addresses.admin[0], "POST", "/admin/breakers/nope?state=open"))[0] == 404
    assert (await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=ajar"))[0] == 400


async def test_a_total_outage_is_not_multiplied_by_retries(tmp_path, nursery, running) -> None:
    server = failing_first(10**9)
    address = await serve(nursery, server)
    extra = RETRY.replace("[retry]", "[retry]\nbudget = { ratio = 0.2, min_per_second = 0.5 }")
    node, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    started = time.monotonic()
    requests = 40
    async with trio.open_nursery() as clients:
        for _ in range(requests):
            clients.start_soon(get, addresses.outbound[0], "api")
    seconds = time.monotonic() - started
    # At most (1 + ratio) x the requests plus min_per_second x the budget window (10 s).
    assert server.requests <= requests * 1.2 + 0.5 * 10 + 1, (server.requests, seconds)
    assert node.groups["api"].protections.retry_budget.exhausted > 0


async def test_rate_limit_answers_429_with_retry_after(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    extra = '[rate_limit]\nrequests_per_second = 0.5\nburst = 2\nper = "client"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    for _ in range(2):
        assert (await get(addresses.outbound[0], "api", "/", "-H", "x-client-id: a"))[0] == 200
    status, headers, _ = await fetch(addresses.outbound[0], "api", "/", "-H", "x-client-id: a")
    assert (status, headers["x-meshnode-error"], headers["retry-after"]) == (
        429,
        "rate-limited",
        "2",
    )
    assert (await get(addresses.outbound[0], "api", "/", "-H", "x-client-id: b"))[0] == 200


async def test_bulkhead_full(tmp_path, nursery, running, hypercorn_upstream) -> None:
    extra = "[balancer]\nmax_connections_per_instance = 1\nmax_pending = 0\n"
    node, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream, extra=extra)})
    )
    async with trio.open_nursery() as clients:
        clients.start_soon(get, addresses.outbound[0], "api", "/slow/1")
        with trio.fail_after(10):
            while not node.groups["api"].picker.in_flight:
                await trio.sleep(0.01)
        status, headers, _ = await fetch(addresses.outbound[0], "api")
    assert (status, headers["x-meshnode-error"]) == (503, "bulkhead-full")


async def test_fault_injection_rates(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    extra = "[chaos]\nabort_percent = 30\nabort_status = 418\n"
    node, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    node.groups["api"].protections.rng.seed(11)
    statuses = []
    for _ in range(200):
        statuses.append((await get(addresses.outbound[0], "api"))[0])
    aborted = statuses.count(418)
    assert 30 <= aborted <= 90  # 30 % of 200 +- 4.6 sigma
    assert statuses.count(200) == 200 - aborted


async def test_header_driven_faults_only_when_enabled(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    _, addresses = await running(
        write_policies(
            tmp_path,
            {
                "on": upstream_toml("on", address, extra="[chaos]\nheader_faults = true\n"),
                "off": upstream_toml("off", address),
            },
        )
    )
    fault = ("-H", "x-meshnode-fault-abort: 503")
    status, headers, _ = await fetch(addresses.outbound[0], "on", "/", *fault)
    assert (status, headers["x-meshnode-error"]) == (503, "chaos-abort")
    assert await get(addresses.outbound[0], "off", "/", *fault) == (200, b"ok")
    started = time.monotonic()
    assert await get(addresses.outbound[0], "on", "/", "-H", "x-meshnode-fault-delay: 300ms") == (
        200,
        b"ok",
    )
    assert time.monotonic() - started >= 0.3
    for header in (
        "x-meshnode-fault-abort: 0",
        "x-meshnode-fault-abort: 99999",
        "x-meshnode-fault-abort: 101",
        "x-meshnode-fault-delay: soon",
        "x-meshnode-fault-delay: 2h",
    ):
        status, headers, body = await fetch(addresses.outbound[0], "on", "/", "-H", header)
        assert (status, headers["x-meshnode-error"]) == (400, "bad-request"), header
        assert header.split(":")[0] in json.loads(body)["detail"]


async def test_static_fallback(tmp_path, nursery, running) -> None:
    extra = """
[circuit_breaker]
failure_threshold = 1
[fallback]
kind = "static"
status = 200
body = '{"status":"queued"}'
headers = { content-type = "application/json" }
"""
    server = failing_first(10)
    address = await serve(nursery, server)
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    assert (await get(addresses.outbound[0], "api"))[0] == 503  # opens the breaker
    status, headers, body = await fetch(addresses.outbound[0], "api")
    assert (status, body) == (200, b'{"status":"queued"}')
    assert headers["x-meshnode-fallback"] == "static"
    assert headers["content-type"] == "application/json"


async def test_a_fallback_answers_every_failure_a_caller_can_see(
    tmp_path, nursery, running
) -> None:
    """The seed's fallback runs on any failure: a dead upstream with no [retry] section,
    and an upstream that answers 5xx, reach theirs."""
    static = '[fallback]\nkind = "static"\nbody = "cached"\non = [{on}]\n'
    failing = await serve(nursery, failing_first(10))
    _, addresses = await running(
        write_policies(
            tmp_path,
            {
                "dead": upstream_toml(
                    "dead", "127.0.0.1:1", extra=static.format(on='"upstream-connect-failure"')
                ),
                "flaky": upstream_toml("flaky", failing, extra=static.format(on='"5xx"')),
                "exact": upstream_toml("exact", failing, extra=static.format(on='"502"')),
            },
        )
    )
    for upstream in ("dead", "flaky"):
        status, headers, body = await fetch(addresses.outbound[0], upstream)
        assert (status, body, headers["x-meshnode-fallback"]) == (200, b"cached", "static")
    assert (await get(addresses.outbound[0], "exact"))[0] == 503  # a 503 is not a 502


async def test_a_real_servers_error_status_reaches_the_fallback(
    tmp_path, running, start_nghttpd
) -> None:
    """nghttpd in its own process answers 404 for a file it lacks: with `on = ["4xx"]` the
    fallback answers instead; a file it has is relayed as it is."""
    extra = '[fallback]\nkind = "static"\nbody = "cached"\non = ["4xx"]\n'
    upstream = start_nghttpd()
    _, addresses = await running(
        write_policies(tmp_path, {"web": upstream_toml("web", upstream, extra=extra)})
    )
    assert await get(addresses.outbound[0], "web", "/index.html") == (200, b"k" * 1024)
    status, headers, body = await fetch(addresses.outbound[0], "web", "/missing.html")
    assert (status, body, headers["x-meshnode-fallback"]) == (200, b"cached", "static")


async def test_upstream_fallback(tmp_path, nursery, running) -> None:
    backup = await answering(nursery, b"from backup")
    extra = (
        '[fallback]\nkind = "upstream"\nupstream = "backup"\n'
        'on = ["no-healthy-endpoints", "retries-exhausted"]\n'
    )
    server = failing_first(10)
    primary = await serve(nursery, server)
    _, addresses = await running(
        write_policies(
            tmp_path,
            {
                "api": upstream_toml("api", primary, extra=RETRY + extra),
                "backup": upstream_toml("backup", backup),
            },
        )
    )
    status, headers, body = await fetch(addresses.outbound[0], "api")
    assert (status, body, headers["x-meshnode-fallback"]) == (200, b"from backup", "upstream")
    assert server.requests == 4  # the first try and three retries


async def test_stale_cache_fallback(tmp_path, nursery, running) -> None:
    server = RawH2Server(lambda conn, event: None)
    server.script = lambda conn, event: (
        respond(conn, event.stream_id, b"fresh")
        if server.requests == 1
        else conn.send_headers(event.stream_id, [(":status", "503")], end_stream=True)
    )
    address = await serve(nursery, server)
    extra = RETRY + '[fallback]\nkind = "stale-cache"\non = ["retries-exhausted"]\nmax_age = "1s"\n'
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    assert await get(addresses.outbound[0], "api", "/item") == (200, b"fresh")
    status, headers, body = await fetch(addresses.outbound[0], "api", "/item")
    assert (status, body, headers["x-meshnode-fallback"]) == (200, b"fresh", "stale-cache")
    assert int(headers["age"]) >= 0
    status, headers, _ = await fetch(addresses.outbound[0], "api", "/other")
    assert (status, headers["x-meshnode-error"]) == (503, "retries-exhausted")  # nothing cached
    await trio.sleep(1.2)
    status, headers, _ = await fetch(addresses.outbound[0], "api", "/item")
    assert (status, headers["x-meshnode-error"]) == (503, "retries-exhausted")  # too old now
