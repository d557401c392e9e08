"""meshnode forwarding real HTTP/2 traffic: curl as the client, real servers upstream."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2.errors
import h2.events
import trio

from meshnode.node import NodeAddresses
from tests.conftest import require, upstream_toml, write_policies
from tests.support.rawclient import RawH2Client
from tests.support.rawh2 import RawH2Server, respond
from tests.support.upstream_app import pattern

Start = Callable[[Path], Awaitable[NodeAddresses]]


async def curl(*args: str, check: bool = True) -> trio.Process | trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [require("curl"), "-s", "--http2-prior-knowledge", "--max-time", "30", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=check,
    )


def split_response(output: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = output.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, {k.lower(): v for k, v in headers.items()}, body


async def request(node: NodeAddresses, authority: str, path: str, *extra: str):
    result = await curl(
        "-i", "-H", f"host: {authority}", *extra, f"http://{node.outbound[0]}{path}"
    )
    return split_response(result.stdout)


async def test_get_is_forwarded_with_proxy_headers(tmp_path, start_node: Start, hypercorn_upstream):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    status, _, body = await request(node, "api:8080", "/headers", "-H", "x-forwarded-for: 10.1.1.1")
    assert status == 200
    seen = json.loads(body)
    assert seen["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert seen["forwarded"] == "for=127.0.0.1;proto=http"
    assert len(seen["x-request-id"]) == 36


async def test_caller_request_id_is_kept(tmp_path, start_node: Start, hypercorn_upstream):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    _, _, body = await request(node, "api", "/headers", "-H", "x-request-id: abc-123")
    assert json.loads(body)["x-request-id"] == "abc-123"


async def test_the_same_answer_relayed_again_on_one_connection_arrives_whole(
    tmp_path, start_node: Start, hypercorn_upstream
):
    """nghttp asks for the same bytes three times on one connection, another length once
    between: a repeated answer's head block is the one the node's encoder built before (an
    equal head, relayed again), the other its own. nghttp, in its own process, must read
    each of them whole and as sent."""
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    sizes = [1000, 1000, 999, 1000]  # the third head differs, in its length alone
    urls = [f"http://{node.outbound[0]}/bytes/{size}?n={n}" for n, size in enumerate(sizes)]
    result = await trio.run_process(
        [require("nghttp"), "-v", "-H", ":authority: api", *urls],
        capture_stdout=True,
        check=True,
    )
    received = [  # "[  0.003] recv (stream_id=3) :status: 200": a field nghttp decoded
        line.partition(b"recv (stream_id=")[2].partition(b") ")[2]
        for line in result.stdout.splitlines()
        if b"recv (stream_id=" in line
    ]
    assert received.count(b":status: 200") == 4
    lengths = [field for field in received if field.startswith(b"content-length: ")]
    assert sorted(lengths) == sorted(b"content-length: %d" % size for size in sizes)
    assert b"recv GOAWAY" not in result.stdout and b"recv RST_STREAM" not in result.stdout


async def test_route_by_path_prefix(tmp_path, start_node: Start, hypercorn_upstream):
    extra = '[[routes]]\npath_prefix = "/bytes/"\n'
    node = await start_node(
        write_policies(tmp_path, {"files": upstream_toml("files", hypercorn_upstream, extra=extra)})
    )
    status, _, body = await request(node, "anything.example", "/bytes/5")
    assert (status, body) == (200, pattern(5))


async def test_unknown_authority_is_no_route(tmp_path, start_node: Start, hypercorn_upstream):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    status, headers, body = await request(node, "nowhere", "/")
    assert status == 404
    assert headers["x-meshnode-error"] == "no-route"
    assert json.loads(body) == {
        "error": "no-route",
        "upstream": None,
        "detail": "no upstream serves nowhere",
    }


async def test_the_nodes_own_answer_to_head_has_no_body(
    tmp_path, start_node: Start, hypercorn_upstream
):
    """RFC 9110 9.3.2: curl (nghttp2) takes a body on a HEAD's answer as a protocol error
    and fails the request; the node's error answers have one for any other method."""
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    status, headers, body = await request(node, "nowhere", "/", "-I")
    assert (status, headers["x-meshnode-error"], body) == (404, "no-route", b"")
    status, headers, _ = await request(node, "api", "/", "-I")
    assert status == 200 and "x-meshnode-error" not in headers


async def test_ten_mebibytes_each_way_arrive_identical(
    tmp_path, start_node: Start, hypercorn_upstream
):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    upload = pattern(10 * 1024 * 1024 + 123)
    source = tmp_path / "upload.bin"
    source.write_bytes(upload)
    echoed = await curl(
        "-H", "host: api", "--data-binary", f"@{source}", f"http://{node.outbound[0]}/echo"
    )
    assert hashlib.sha256(echoed.stdout).digest() == hashlib.sha256(upload).digest()
    size = 12 * 1024 * 1024
    downloaded = await curl("-H", "host: api", f"http://{node.outbound[0]}/bytes/{size}")
    assert downloaded.stdout == pattern(size)


async def test_trailers_pass_through(tmp_path, start_node: Start, hypercorn_upstream):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    result = await curl(
        "-v", "-H", "host: api", "-H", "te: trailers", f"http://{node.outbound[0]}/trailers"
    )
    assert result.stdout == b"body before trailers"
    assert b"x-checksum: abc123" in result.stderr


async def test_upstream_down_is_connect_failure(tmp_path, start_node: Start):
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    status, headers, body = await request(node, "api", "/")
    assert status == 503
    assert headers["x-meshnode-error"] == "upstream-connect-failure"
    answer = json.loads(body)
    assert answer["upstream"] == "api"
    assert "x-request-id" in headers


async def test_slow_upstream_times_out(tmp_path, start_node: Start, hypercorn_upstream):
    policy = upstream_toml("api", hypercorn_upstream, extra='[timeout]\nrequest = "300ms"\n')
    node = await start_node(write_policies(tmp_path, {"api": policy}))
    status, headers, body = await request(node, "api", "/slow/5")
    assert status == 504
    assert headers["x-meshnode-error"] == "timeout"
    assert json.loads(body)["detail"] == "no complete response within 0.3s"


async def test_upstream_reset_before_head_is_502(tmp_path, start_node: Start, nursery):
    def reset_at_once(conn, event: h2.events.RequestReceived) -> None:
        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    port = await nursery.start(RawH2Server(reset_at_once).serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    status, headers, _ = await request(node, "api", "/")
    assert status == 502
    assert headers["x-meshnode-error"] == "upstream-reset"


async def test_upstream_reset_mid_body_reaches_the_client_as_a_reset(
    tmp_path, start_node: Start, nursery
):
    def reset_mid_body(conn, event: h2.events.RequestReceived) -> None:
        conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "100000")])
        conn.send_data(event.stream_id, b"x" * 1000)
        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    port = await nursery.start(RawH2Server(reset_mid_body).serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    result = await curl("-v", "-H", "host: api", f"http://{node.outbound[0]}/", check=False)
    assert result.returncode == 92, result.stderr  # CURLE_HTTP2_STREAM: the stream was reset
    assert b"INTERNAL_ERROR" in result.stderr or b"err 2" in result.stderr


async def test_client_reset_cancels_the_upstream_stream(tmp_path, start_node: Start, nursery):
    server = RawH2Server(lambda conn, event: None)  # never answers
    port = await nursery.start(server.serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    result = await curl(
        "-H", "host: api", "--max-time", "0.5", f"http://{node.outbound[0]}/", check=False
    )
    assert result.returncode == 28  # curl gave up and reset its stream
    with trio.fail_after(5):
        while not server.resets_received:
            await trio.sleep(0.01)
    assert server.resets_received == [1]


async def test_client_reset_during_an_injected_delay_stops_the_request(
    tmp_path, start_node: Start, nursery
):
    server = RawH2Server(lambda conn, event: respond(conn, event.stream_id, b"late"))
    port = await nursery.start(server.serve)
    chaos = "[chaos]\nheader_faults = true\n"
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}", extra=chaos)})
    )
    delayed = ("-H", "x-meshnode-fault-delay: 1500ms", "--max-time", "0.3")
    result = await curl("-H", "host: api", *delayed, f"http://{node.outbound[0]}/", check=False)
    assert result.returncode == 28  # curl gave up and reset its stream
    await trio.sleep(1.5)  # past the delay: a request still alive would have gone upstream
    assert server.requests == 0


async def test_many_concurrent_streams_share_few_upstream_connections(
    tmp_path, start_node: Start, hypercorn_upstream
):
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    h2load = require("h2load")
    result = await trio.run_process(
        [
            h2load,
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "50",
            "-H",
            ":authority: api",
            f"http://{node.outbound[0]}/",
        ],
        capture_stdout=True,
        check=True,
    )
    out = result.stdout.decode()
    assert "2000 succeeded, 0 failed, 0 errored" in out, out


async def test_upstream_goaway_leads_to_a_new_connection(tmp_path, start_node: Start, nursery):
    def answer_then_goaway(conn, event: h2.events.RequestReceived) -> None:
        respond(conn, event.stream_id)
        conn.close_connection(last_stream_id=event.stream_id)

    server = RawH2Server(answer_then_goaway)
    port = await nursery.start(server.serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    for _ in range(3):
        status, _, body = await request(node, "api", "/")
        assert (status, body) == (200, b"ok")
    assert server.connections == 3


async def test_request_refused_by_goaway_is_sent_again(tmp_path, start_node: Start, nursery):
    server = RawH2Server(lambda conn, event: None)

    def refuse_first(conn, event: h2.events.RequestReceived) -> None:
        if server.requests == 1:
            conn.close_connection(last_stream_id=0)  # "I processed nothing"
        else:
            respond(conn, event.stream_id, b"second connection")

    server.script = refuse_first
    port = await nursery.start(server.serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    status, _, body = await request(node, "api", "/")
    assert (status, body) == (200, b"second connection")
    assert server.connections == 2


async def answered_before_its_body(node: NodeAddresses, send_body: bool) -> tuple[float, int]:
    """A POST with no route, its body held back until the 404 is in: when the stream
    ended (seconds after the answer), and the reset that ended it (-1: none, closed clean)."""
    client = await RawH2Client.connect(node.outbound[0])
    stream_id = await client.request("nowhere", "/charge", end_stream=False)
    ended = await client.receive_until(h2.events.StreamEnded, stream_id)
    answered = trio.current_time()
    assert ended is not None
    if send_body:
        client.conn.send_data(stream_id, b"x" * 1000, end_stream=True)
        await client.flush()
    with trio.move_on_after(2):
        while not any(
            isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id for e in client.events
        ):
            await client.receive()
    resets = [
        e.error_code
        for e in client.events
        if isinstance(e, h2.events.StreamReset) and e.stream_id == stream_id
    ]
    await client.aclose()
    return trio.current_time() - answered, resets[0] if resets else -1


async def test_a_body_still_on_its_way_after_the_answer_is_read_not_cut_off(
    tmp_path, start_node: Start, hypercorn_upstream
) -> None:
    """RFC 9113 8.1 lets a server that answered early ask the client to stop with
    RST_STREAM NO_ERROR; curl takes that, mid-upload, as a failed exchange (exit 92, the
    answer lost). The node reads a short body still on its way first; one that does not
    come is cut off a second later."""
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    _, reset = await answered_before_its_body(node, send_body=True)
    assert reset == -1  # the body came, the stream closed both ways: nothing to reset
    waited, reset = await answered_before_its_body(node, send_body=False)
    assert reset == h2.errors.ErrorCodes.NO_ERROR
    assert 0.9 <= waited < 1.9
