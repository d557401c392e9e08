"""Flow control, trailers, drain and isolation, seen from real peers on real sockets."""

from __future__ import annotations

import functools

import h2.events
import trio

from meshnode.node import Node
from meshnode.policy import load_policies
from tests.conftest import require, upstream_toml, write_policies
from tests.support import upstream_app
from tests.support.rawclient import RawH2Client
from tests.support.rawh2 import RawH2Server


async def test_request_trailers_reach_the_upstream(tmp_path, start_node, nursery) -> None:
    server = RawH2Server(lambda conn, event: None)
    port = await nursery.start(server.serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    client = await RawH2Client.connect(node.outbound[0])
    stream_id = await client.request("api", "/upload", end_stream=False)
    client.conn.send_data(stream_id, b"payload")
    client.conn.send_headers(stream_id, [("x-checksum", "42")], end_stream=True)
    await client.flush()
    with trio.fail_after(10):
        await client.receive_until(h2.events.StreamEnded, stream_id)
    assert server.body_received == b"payload"
    assert server.trailers_received == [[(b"x-checksum", b"42")]]


async def test_a_client_that_does_not_read_holds_the_upstream_back(
    tmp_path, start_node, nursery
) -> None:
    """An endless body, a client that never acknowledges: the upstream is held back."""
    server = RawH2Server(lambda conn, event: None)

    def endless(conn, event: h2.events.RequestReceived) -> None:
        conn.send_headers(event.stream_id, [(":status", "200")])
        server.endless.add(event.stream_id)

    server.script = endless
    port = await nursery.start(server.serve)
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", f"127.0.0.1:{port}")})
    )
    client = await RawH2Client.connect(node.outbound[0])
    stream_id = await client.request("api", "/endless")
    received = 0
    with trio.move_on_after(2):  # bounded: long enough for every buffer to fill
        while True:
            for event in await client.receive():
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)  # read, but never acknowledged
    stalled_at = server.bytes_sent
    assert received <= 65535  # the client's window: meshnode respected it
    # Held by meshnode: at most its stream window (256 KiB) beyond what the client took.
    assert received < stalled_at <= received + 256 * 1024, (received, stalled_at)
    client.conn.acknowledge_received_data(received, stream_id)
    await client.flush()
    with trio.fail_after(10):
        while server.bytes_sent == stalled_at:
            await client.receive()  # acknowledging lets the upstream go on
    client.conn.reset_stream(stream_id)
    await client.flush()


async def test_drain_sends_goaway_and_lets_the_request_in_flight_finish(
    tmp_path, nursery, hypercorn_upstream
) -> None:
    policies = load_policies(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)}, drain="10s")
    )
    node = Node(policies)
    addresses = await nursery.start(functools.partial(node.run, handle_signals=False))
    arrived = trio.Event()
    upstream_app.on_request = lambda path: arrived.set()
    try:
        async with trio.open_nursery() as clients:
            result: list[trio.CompletedProcess[bytes]] = []

            async def nghttp() -> None:
                result.append(
                    await trio.run_process(
                        [
                            require("nghttp"),
                            "-v",
                            "-H",
                            ":authority: api",
                            f"http://{addresses.outbound[0]}/slow/0.5",
                        ],
                        capture_stdout=True,
                    )
                )

            clients.start_soon(nghttp)
            with trio.fail_after(10):
                await arrived.wait()
            node.request_drain()
    finally:
        upstream_app.on_request = None
    output = result[0].stdout.decode()
    goaway = output.index("recv GOAWAY frame")
    assert "last_stream_id=13" in output[goaway : goaway + 200]
    assert output.index("recv DATA frame", goaway) > goaway  # the answer came after the GOAWAY
    assert "slow answer" in output
    assert node.draining


async def test_a_broken_connection_leaves_the_listener_and_others_alone(
    tmp_path, start_node, hypercorn_upstream
) -> None:
    node = await start_node(
        write_policies(tmp_path, {"api": upstream_toml("api", hypercorn_upstream)})
    )
    healthy = await RawH2Client.connect(node.outbound[0])
    first = await healthy.request("api", "/")
    with trio.fail_after(10):
        await healthy.receive_until(h2.events.StreamEnded, first)

    garbage = await trio.open_tcp_stream(node.outbound[0].host, node.outbound[0].port)
    zero_window_update = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
    await garbage.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + zero_window_update)
    with trio.fail_after(10):
        answer = b""
        while chunk := await garbage.receive_some(65536):
            answer += chunk
    assert b"\x07\x00\x00\x00\x00\x00" in answer  # a GOAWAY frame header, then closed

    rapid = await RawH2Client.connect(node.outbound[0])
    for _ in range(200):
        stream_id = await rapid.request("api", "/slow/1")
        rapid.conn.reset_stream(stream_id)
    await rapid.flush()

    second = await healthy.request("api", "/")
    with trio.fail_after(10):
        await healthy.receive_until(h2.events.StreamEnded, second)
    late = await RawH2Client.connect(node.outbound[0])
    third = await late.request("api", "/")
    with trio.fail_after(10):
        await late.receive_until(h2.events.StreamEnded, third)
