"""HTTP/1.1 on both sides of the node, with real clients (curl, Python's http.client, wrk)
and real servers (Hypercorn speaks HTTP/1.1 and HTTP/2 on the same port)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from pathlib import Path

import pytest
import trio

from tests.conftest import require, upstream_toml, write_policies
from tests.support.client import fetch
from tests.support.mtls import TRUST, mtls_chain
from tests.support.raw_http1 import ScriptedUpstream, responses_in, send_raw
from tests.support.user_service import UserService, download_body

HTTP1 = 'protocol = "http1"\n'


def http1_upstream(name: str, *endpoints: str, extra: str = "") -> str:
    return upstream_toml(name, *endpoints, extra=extra, upstream_keys=HTTP1)


UPSTREAMS = {"h2": upstream_toml, "http1": http1_upstream}


@pytest.fixture
async def users(nursery) -> tuple[UserService, str]:
    service = UserService("users")
    return service, await service.start(nursery)


async def node_for(tmp_path: Path, running, upstreams: dict[str, str]) -> str:
    _, addresses = await running(write_policies(tmp_path / "policies", upstreams))
    return str(addresses.outbound[0])


@pytest.fixture
async def users_node(tmp_path: Path, running, users) -> str:
    """A node whose one upstream, ``users``, is the ``users`` service."""
    return await node_for(tmp_path, running, {"users": upstream_toml("users", users[1])})


def get(
    address: str,
    path: str,
    host: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    requests: int = 1,
) -> list[tuple[int, bytes]]:
    """``requests`` calls on one keep-alive connection with Python's http.client."""
    host_name, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host_name, int(port), timeout=10)
    answers = []
    try:
        for _ in range(requests):
            connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            answers.append((response.status, response.read()))
    finally:
        connection.close()
    return answers


@pytest.mark.parametrize("protocol", ["h2", "http1"])
async def test_http_client_keeps_one_connection_through_the_node(
    tmp_path, running, users, protocol
) -> None:
    service, address = users
    node = await node_for(tmp_path, running, {"users": UPSTREAMS[protocol]("users", address)})
    answers = await trio.to_thread.run_sync(lambda: get(node, "/users/7?x=1", "users", requests=5))
    assert [status for status, _ in answers] == [200] * 5
    assert json.loads(answers[0][1]) == {
        "instance": "users",
        "path": "/users/7",
        "query": {"x": "1"},
    }
    assert service.versions == ({"1.1"} if protocol == "http1" else {"2"})
    assert len(service.connections) == 1  # pooled: one upstream connection for all five
    assert "connection" not in service.seen[0] and service.seen[0]["host"] == "users"


async def test_curl_http1_post_to_an_http1_upstream(tmp_path, running, users) -> None:
    service, address = users
    node = await node_for(tmp_path, running, {"users": http1_upstream("users", address)})
    status, _, body = await fetch(
        node, "users", "/api/users", "--http1.1", "--json", '{"name": "John"}'
    )
    assert status == 201 and json.loads(body)["name"] == "John"
    assert service.seen[0]["content-type"] == "application/json"
    assert "x-forwarded-for" in service.seen[0] and "x-request-id" in service.seen[0]


async def test_http2_client_to_an_http1_upstream(tmp_path, running, users) -> None:
    service, address = users
    node = await node_for(tmp_path, running, {"users": http1_upstream("users", address)})
    status, _, body = await fetch(node, "users", "/download?size=300000")
    assert status == 200 and body == download_body(300_000)
    assert service.versions == {"1.1"}


@pytest.mark.parametrize("upstream_protocol", ["h2", "http1"])
async def test_large_chunked_bodies_both_ways_are_byte_identical(
    tmp_path, running, users, upstream_protocol
) -> None:
    _, address = users
    upstream = UPSTREAMS[upstream_protocol]("users", address)
    node = await node_for(tmp_path, running, {"users": upstream})
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * (20 * 4096))  # 20 MiB
    upload = await trio.run_process(
        [
            require("curl"),
            "-s",
            "--http1.1",
            "-H",
            "host: users",
            "-H",
            "transfer-encoding: chunked",
            "-H",
            "expect: 100-continue",
            "--data-binary",
            f"@{payload}",
            "-w",
            "\n%{http_code}",
            f"http://{node}/upload",
        ],
        capture_stdout=True,
    )
    body, _, code = upload.stdout.rpartition(b"\n")
    status = int(code)
    assert status == 200
    assert json.loads(body) == {
        "size": payload.stat().st_size,
        "sha256": hashlib.sha256(payload.read_bytes()).hexdigest(),
    }
    size = 20 * 1024 * 1024
    status, headers, body = await fetch(node, "users", f"/download?size={size}", "--http1.1")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert hashlib.sha256(body).digest() == hashlib.sha256(download_body(size)).digest()


async def test_pipelined_requests_are_answered_in_order(tmp_path, running, users) -> None:
    _, address = users
    node = await node_for(tmp_path, running, {"users": http1_upstream("users", address)})
    pipeline = (
        b"".join(f"GET /p{n} HTTP/1.1\r\nHost: users\r\n\r\n".encode() for n in range(5))
        + b"GET /last HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n"
    )
    answers = responses_in(await send_raw(node, pipeline))
    assert [json.loads(body)["path"] for _, _, body in answers] == [
        "/p0",
        "/p1",
        "/p2",
        "/p3",
        "/p4",
        "/last",
    ]


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: users\r\n\r\n"
    ),
    "two equal content-lengths": (
        b"POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "two different content-lengths": (
        b"POST / HTTP/1.1\r\nHost: users\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: users\r\nX-Folded: a\r\n b\r\n\r\n",
    "a transfer coding other than chunked": (
        b"POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "a bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: users\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n"
    ),
    "a control character in a value": b"GET / HTTP/1.1\r\nHost: users\r\nX-Bad: a\x01b\r\n\r\n",
    "a space before the colon": b"GET / HTTP/1.1\r\nHost: users\r\nX-Bad : a\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: users\r\nHost: other\r\n\r\n",
}


@pytest.mark.parametrize("attempt", list(SMUGGLING), ids=list(SMUGGLING))
async def test_ambiguous_requests_get_400_and_are_never_forwarded(
    tmp_path, running, users, attempt
) -> None:
    service, address = users
    node = await node_for(tmp_path, running, {"users": http1_upstream("users", address)})
    raw = await send_raw(node, SMUGGLING[attempt])
    answers = responses_in(raw)
    assert len(answers) == 1, raw  # and the connection closed: nothing after it is read
    status, headers, body = answers[0]
    assert status == 400, raw
    assert headers[b"x-meshnode-error"] == b"bad-request"
    assert headers[b"connection"] == b"close"
    assert json.loads(body)["error"] == "bad-request"
    assert service.requests == 0


AMBIGUOUS_RESPONSES = {
    "content-length and transfer-encoding": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "two content-lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


@pytest.mark.parametrize("answer", list(AMBIGUOUS_RESPONSES), ids=list(AMBIGUOUS_RESPONSES))
async def test_an_ambiguous_upstream_response_is_a_failure(
    tmp_path, nursery, running, answer
) -> None:
    upstream = ScriptedUpstream(lambda n: AMBIGUOUS_RESPONSES[answer])
    address = await nursery.start(upstream.serve)
    node = await node_for(tmp_path, running, {"odd": http1_upstream("odd", address)})
    status, headers, _ = await fetch(node, "odd", "/", "--http1.1")
    assert (status, headers["x-meshnode-error"]) == (502, "upstream-reset")


async def test_a_connection_that_failed_mid_response_is_never_reused(
    tmp_path, nursery, running
) -> None:
    def answer(n: int) -> bytes:
        if n == 1:  # promises ten bytes, sends four, closes
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwhole"

    upstream = ScriptedUpstream(answer, close_after=True)
    address = await nursery.start(upstream.serve)
    node = await node_for(tmp_path, running, {"odd": http1_upstream("odd", address)})
    first = await trio.run_process(
        [require("curl"), "-s", "--http1.1", "-H", "host: odd", f"http://{node}/"],
        capture_stdout=True,
        check=False,
    )
    assert first.returncode != 0  # cut short, never a complete-looking body
    status, _, body = await fetch(node, "odd", "/", "--http1.1")
    assert (status, body) == (200, b"whole")
    assert upstream.connections == 2


async def test_resilience_applies_to_http1_upstreams(tmp_path, nursery, running) -> None:
    flaky = UserService("flaky")
    flaky.fail_next = 2
    address = await flaky.start(nursery)
    retry = '[retry]\nmax_retries = 3\ninitial_delay = "5ms"\n'
    node = await node_for(
        tmp_path, running, {"flaky": http1_upstream("flaky", address, extra=retry)}
    )
    status, _, _ = await fetch(node, "flaky", "/", "--http1.1")
    assert status == 200 and flaky.requests == 3


async def test_wrk_through_the_node(tmp_path, running, users) -> None:
    service, address = users
    node = await node_for(tmp_path, running, {"users": http1_upstream("users", address)})
    result = await trio.run_process(
        [require("wrk"), "-t1", "-c4", "-d1s", "-H", "Host: users", f"http://{node}/wrk"],
        capture_stdout=True,
    )
    report = result.stdout.decode()
    done = int(re.search(r"(\d+) requests in", report).group(1))
    assert done > 20, report
    assert "Non-2xx" not in report and "Socket errors" not in report, report
    assert len(service.connections) <= 4  # keep-alive upstream: at most one per caller


async def test_http1_at_both_ends_of_an_mtls_chain(tmp_path, running, users) -> None:
    """curl (HTTP/1.1) -> node A -> HTTP/2 + mTLS -> node B -> the local service (HTTP/1.1)."""
    service, local = users
    a = await mtls_chain(tmp_path, running, local, local_protocol="http1")
    status, _, body = await fetch(a.outbound[0], "node-b", "/chained", "--http1.1")
    assert status == 200 and json.loads(body)["path"] == "/chained"
    assert service.versions == {"1.1"}
    assert service.seen[0]["x-meshnode-peer-identity"] == f"spiffe://{TRUST}/service/node-a"


async def test_http2_trailers_reach_an_http1_caller_as_chunked_trailers(users_node: str) -> None:
    raw = await send_raw(
        users_node,
        b"GET /download?size=1000 HTTP/1.1\r\nHost: users\r\nTE: trailers\r\n"
        b"Connection: close\r\n\r\n",
    )
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert re.search(rb"\r\n0\r\nx-checksum: [0-9a-f]{64}\r\n\r\n$", raw), raw[-200:]
    ((status, _, body),) = responses_in(raw)
    assert status == 200 and body == download_body(1000)


async def test_an_http10_caller_gets_no_trailers_and_a_whole_answer(users_node: str) -> None:
    """Found by fuzz/http1.py: trailers cannot go to an HTTP/1.0 caller (no chunking); h11
    refused them and the session broke. They are dropped; the body arrives whole."""
    raw = await send_raw(
        users_node, b"GET /download?size=1000 HTTP/1.0\r\nHost: users\r\nTE: trailers\r\n\r\n"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert body == download_body(1000)
    assert b"x-checksum" not in raw


async def test_a_head_request_gets_a_head_even_from_the_mesh(users_node: str) -> None:
    """Found by fuzz/http1.py: the node's own answers carry a JSON body, which an answer to
    HEAD may not; h11 refused it and the connection broke. The body is dropped instead."""
    raw = await send_raw(
        users_node,
        b"HEAD /x HTTP/1.1\r\nHost: nowhere\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: users\r\nConnection: close\r\n\r\n",
    )
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404") and b"x-meshnode-error: no-route" in first
    assert rest.startswith(b"HTTP/1.1 200")  # the same connection goes on, nothing in between


async def test_the_http1_pool_is_bounded_by_the_bulkhead_and_retires_idle_connections(
    tmp_path, running, users
) -> None:
    service, address = users
    bulkhead = "[balancer]\nmax_connections_per_instance = 2\n"
    directory = write_policies(
        tmp_path / "policies", {"users": http1_upstream("users", address, extra=bulkhead)}
    )
    with (directory / "node.toml").open("a") as node_toml:
        node_toml.write('[limits]\nidle_timeout = "1s"\n')
    _, addresses = await running(directory)
    node = str(addresses.outbound[0])
    statuses: list[int] = []

    async def download() -> None:
        status, _, _ = await fetch(node, "users", "/download?size=2000000", "--http1.1")
        statuses.append(status)

    async with trio.open_nursery() as callers:
        for _ in range(6):
            callers.start_soon(download)
    assert statuses == [200] * 6
    assert len(service.connections) <= 2  # one request per connection, two at a time
    before = len(service.connections)
    await trio.sleep(1.5)  # past the idle timeout: the pooled connections close
    assert (await fetch(node, "users", "/after-idle", "--http1.1"))[0] == 200
    assert len(service.connections) == before + 1  # a new one, the idle ones retired


PER_TRY = '[timeout]\nrequest = "5s"\nper_try = "300ms"\n'


@pytest.mark.parametrize("protocol", ["h2", "http1"])
async def test_the_per_try_timeout_bounds_the_wait_for_the_head_not_the_body(
    tmp_path, running, hypercorn_upstream, protocol
) -> None:
    policy = UPSTREAMS[protocol]("api", hypercorn_upstream, extra=PER_TRY)
    node = await node_for(tmp_path, running, {"api": policy})
    # The head comes with the first KiB after 150 ms; the last KiB 600 ms in.
    status, _, body = await fetch(node, "api", "/drip/4/0.15")
    assert (status, body) == (200, b"d" * 4096)


async def test_a_slow_http1_try_is_abandoned_and_retried(tmp_path, running, nursery) -> None:
    upstream = ScriptedUpstream(
        lambda n: None if n == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nsecond try"
    )
    address = await nursery.start(upstream.serve)
    retry = '[retry]\nretry_on = ["timeout"]\ninitial_delay = "10ms"\n'
    node = await node_for(
        tmp_path, running, {"odd": http1_upstream("odd", address, extra=PER_TRY + retry)}
    )
    status, _, body = await fetch(node, "odd", "/")
    assert (status, body) == (200, b"second try")
    assert (upstream.requests, upstream.connections) == (2, 2)  # the held one was given up


@pytest.mark.parametrize(
    ("timeouts", "detail"),
    [
        ('request = "5s"\nper_try = "200ms"', "no response head within the per-try 0.2s"),
        ('request = "200ms"\nper_try = "5s"', "no complete response within 0.2s"),
    ],
)
async def test_the_sooner_of_the_two_timeouts_answers(
    tmp_path, running, hypercorn_upstream, timeouts, detail
) -> None:
    policy = upstream_toml("api", hypercorn_upstream, extra=f"[timeout]\n{timeouts}\n")
    node = await node_for(tmp_path, running, {"api": policy})
    status, headers, body = await fetch(node, "api", "/slow/5")
    assert (status, headers["x-meshnode-error"]) == (504, "timeout")
    assert json.loads(body)["detail"] == detail
