"""Hostile and broken peers, over real sockets: each gets a GOAWAY or a reset, costs
bounded memory, and a bystander on another connection goes on being served quickly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import h2.connection
import h2.events
import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from meshnode.net.overload import resident_bytes
from tests.conftest import answering, upstream_toml, write_policies
from tests.support.attacker import (
    HELLO,
    SETTINGS_ACK,
    attack,
    get,
    parse_frames,
    request_frame,
    reset_frame,
)
from tests.support.client import get as curl_get
from tests.support.client import metrics
from tests.support.rawclient import RawH2Client
from tests.support.rawh2 import RawH2Server, respond

NO_ERROR, PROTOCOL_ERROR, SETTINGS_TIMEOUT, FRAME_SIZE_ERROR = 0x0, 0x1, 0x4, 0x6
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x7, 0x8, 0xB
MIB = 1024 * 1024


def policies(directory: Path, upstream: str, limits: str = "") -> Path:
    write_policies(directory, {"api": upstream_toml("api", upstream)})
    if limits:
        with (directory / "node.toml").open("a") as node:
            node.write("\n[limits]\n" + limits)
    return directory


async def served_within(client: RawH2Client, seconds: float = 2.0) -> float:
    """Ask for / on ``client``'s connection; the seconds the answer took (at most ``seconds``)."""
    start = trio.current_time()
    stream_id = await client.request("api", "/")
    with trio.fail_after(seconds):
        await client.receive_until(h2.events.StreamEnded, stream_id)
    return trio.current_time() - start


def repeat(frame: bytes, count: int, per_chunk: int = 200) -> Iterator[bytes]:
    for start in range(0, count, per_chunk):
        yield frame * min(per_chunk, count - start)


def rapid_resets(count: int) -> Iterator[bytes]:
    encoder = hpack.Encoder()
    for index in range(count):
        stream_id = 2 * index + 1
        yield request_frame(stream_id, get(b"api"), end_stream=False, encoder=encoder)
        yield reset_frame(stream_id)


def made_you_reset(count: int) -> Iterator[bytes]:
    """MadeYouReset (CVE-2025-8671): each request ends its stream, then a DATA frame on it
    makes the node's h2 reset the stream itself; a Rapid Reset budget never sees one."""
    encoder = hpack.Encoder()
    for index in range(count):
        stream_id = 2 * index + 1
        yield request_frame(stream_id, get(b"api"), encoder=encoder)
        yield bytes(DataFrame(stream_id, data=b"x").serialize())


def empty_continuations(count: int) -> Iterator[bytes]:
    yield bytes(HeadersFrame(1, data=hpack.Encoder().encode(get(b"api"))).serialize())
    yield from repeat(bytes(ContinuationFrame(1, data=b"").serialize()), count)


def big_continuations(count: int) -> Iterator[bytes]:
    """An endless header block: each CONTINUATION carries 16 KiB of literal header."""
    yield bytes(HeadersFrame(1, data=hpack.Encoder().encode(get(b"api"))).serialize())
    field = hpack.Encoder().encode([(b"x-pad", b"a" * 16000)], huffman=False)
    for _ in range(count):
        yield bytes(ContinuationFrame(1, data=field).serialize())


def oversized_frame() -> Iterator[bytes]:
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    yield header + b"x" * 65536  # the rest of the 16 MiB never needs to come


def flood(frame: object, count: int) -> Callable[[], Iterator[bytes]]:
    return lambda: repeat(bytes(frame.serialize()), count)  # type: ignore[attr-defined]


# What each attack sends, the GOAWAY code it must get, and the violation counted.
ATTACKS: dict[str, tuple[Callable[[], Iterable[bytes]], int, str]] = {
    "ping flood": (flood(PingFrame(0), 5000), ENHANCE_YOUR_CALM, "ping-flood"),
    "settings flood": (flood(SettingsFrame(0), 2000), ENHANCE_YOUR_CALM, "settings-flood"),
    "priority flood": (flood(PriorityFrame(1), 5000), ENHANCE_YOUR_CALM, "priority-flood"),
    "window update flood": (
        flood(WindowUpdateFrame(0, window_increment=1), 20000),
        ENHANCE_YOUR_CALM,
        "window-update-flood",
    ),
    "empty data frames": (
        lambda: [
            request_frame(1, [(b":method", b"POST"), *get(b"api")[1:]], end_stream=False),
            *repeat(bytes(DataFrame(1, data=b"").serialize()), 100),
        ],
        ENHANCE_YOUR_CALM,
        "empty-frame-flood",
    ),
    "empty continuation frames": (
        lambda: empty_continuations(100),
        ENHANCE_YOUR_CALM,
        "empty-frame-flood",
    ),
    "continuation flood (HPACK bomb)": (
        lambda: big_continuations(100),
        ENHANCE_YOUR_CALM,
        "header-flood",
    ),
    "rapid reset": (lambda: rapid_resets(5000), ENHANCE_YOUR_CALM, "resets-received-flood"),
    "made you reset": (lambda: made_you_reset(5000), ENHANCE_YOUR_CALM, "resets-sent-flood"),
    "oversized frame header": (oversized_frame, FRAME_SIZE_ERROR, "frame-size"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
async def test_each_attack_gets_goaway_and_a_bystander_is_served(
    name: str, tmp_path, nursery, start_node
) -> None:
    node = await start_node(policies(tmp_path, await answering(nursery, b"ok")))
    address = node.outbound[0]
    bystander = await RawH2Client.connect(address)
    await served_within(bystander)
    before = resident_bytes()
    chunks, code, kind = ATTACKS[name]

    exchange = await attack(address, chunks(), within=10)

    goaway = exchange.goaway()
    assert goaway is not None and goaway.error_code == code, exchange.frames[-3:]
    assert resident_bytes() - before < 64 * MIB
    assert await served_within(bystander) < 1.0
    late = await RawH2Client.connect(address)
    await served_within(late)
    counted = f'meshnode_protocol_violations_total{{kind="{kind}",listener="outbound"}} 1.0'
    assert counted in await metrics(node.admin[0])


async def test_a_malformed_request_fails_its_stream_not_the_connection(
    tmp_path, nursery, start_node
) -> None:
    node = await start_node(policies(tmp_path, await answering(nursery, b"ok")))
    encoder = hpack.Encoder()
    exchange = await attack(
        node.outbound[0],
        [
            request_frame(1, [*get(b"api"), (b"x_user", b"admin")], encoder=encoder),
            request_frame(3, get(b"api", b"no-slash"), encoder=encoder),
            request_frame(5, get(b"api"), encoder=encoder),
        ],
        linger=1.0,
    )
    assert exchange.goaway() is None
    decoder = hpack.Decoder()
    heads = {
        frame.stream_id: dict(decoder.decode(frame.payload))[":status"]
        for frame in exchange.frames
        if frame.type == 0x1
    }
    assert heads == {1: "400", 3: "400", 5: "200"}


async def test_slowloris_connections_are_closed_at_the_header_timeout(
    tmp_path, nursery, start_node
) -> None:
    node = await start_node(
        policies(tmp_path, await answering(nursery, b"ok"), 'header_timeout = "1s"\n')
    )
    address = node.outbound[0]
    bystander = await RawH2Client.connect(address)
    partial = request_frame(1, get(b"api"))[:12]  # a frame header and three bytes of it
    results: list[int | None] = []

    async def slowloris() -> None:
        exchange = await attack(address, [partial], within=5)
        goaway = exchange.goaway()
        results.append(goaway.error_code if goaway else None)

    async with trio.open_nursery() as many:
        for _ in range(50):
            many.start_soon(slowloris)
        await trio.sleep(0.5)
        assert await served_within(bystander) < 1.0
    assert results == [ENHANCE_YOUR_CALM] * 50
    assert await served_within(bystander) < 1.0


async def test_a_silent_connection_is_closed_at_the_first_request_timeout(
    tmp_path, nursery, start_node
) -> None:
    node = await start_node(
        policies(tmp_path, await answering(nursery, b"ok"), 'first_request_timeout = "1s"\n')
    )
    exchange = await attack(node.outbound[0], [], within=5)
    goaway = exchange.goaway()
    assert goaway is not None and goaway.error_code == NO_ERROR


async def test_a_peer_that_never_acknowledges_settings_is_dropped(
    tmp_path, nursery, start_node
) -> None:
    node = await start_node(
        policies(tmp_path, await answering(nursery, b"ok"), 'settings_timeout = "1s"\n')
    )
    exchange = await attack(node.outbound[0], [request_frame(1, get(b"api"))], hello=HELLO)
    goaway = exchange.goaway()
    assert goaway is not None and goaway.error_code == SETTINGS_TIMEOUT
    assert any(frame.type == 0x1 for frame in exchange.frames)  # it was served meanwhile


async def test_slow_readers_are_reset_at_the_stream_idle_timeout(
    tmp_path, nursery, start_node, hypercorn_upstream
) -> None:
    node = await start_node(policies(tmp_path, hypercorn_upstream, 'stream_idle_timeout = "1s"\n'))
    address = node.outbound[0]
    bystander = await RawH2Client.connect(address)
    before = resident_bytes()
    readers = [await RawH2Client.connect(address, window=0) for _ in range(20)]
    streams = [await reader.request("api", f"/bytes/{MIB}") for reader in readers]
    with trio.fail_after(10):
        for reader, stream_id in zip(readers, streams, strict=True):
            reset = await reader.receive_until(h2.events.StreamReset, stream_id)
            assert reset.error_code == CANCEL
    assert resident_bytes() - before < 64 * MIB
    assert await served_within(bystander) < 1.0


async def test_a_body_that_dribbles_is_reset_at_the_stream_idle_timeout(
    tmp_path, nursery, start_node, hypercorn_upstream
) -> None:
    node = await start_node(policies(tmp_path, hypercorn_upstream, 'stream_idle_timeout = "1s"\n'))
    client = await RawH2Client.connect(node.outbound[0])
    stream_id = await client.request("api", "/echo", end_stream=False)
    client.conn.send_data(stream_id, b"x")
    await client.flush()
    with trio.fail_after(5):
        reset = await client.receive_until(h2.events.StreamReset, stream_id)
    assert reset.error_code == CANCEL
    await served_within(client)


async def test_requests_per_connection_end_in_a_graceful_goaway(
    tmp_path, nursery, start_node
) -> None:
    """RFC 9113 6.8 from the node's side: the GOAWAY names the last stream it took, each
    stream up to it is answered, and one past it is refused, never forwarded."""
    upstream = RawH2Server(lambda conn, event: respond(conn, event.stream_id))
    port = await nursery.start(upstream.serve)
    node = await start_node(
        policies(tmp_path, f"127.0.0.1:{port}", "max_requests_per_connection = 3\n")
    )
    encoder = hpack.Encoder()
    exchange = await attack(
        node.outbound[0], [request_frame(n, get(b"api"), encoder=encoder) for n in (1, 3, 5, 7)]
    )
    goaway = exchange.goaway()
    assert goaway is not None and goaway.error_code == NO_ERROR
    assert int.from_bytes(goaway.payload[:4], "big") == 5
    assert sorted(frame.stream_id for frame in exchange.frames if frame.type == 0x1) == [1, 3, 5]
    (refused,) = (frame for frame in exchange.frames if frame.type == 0x3)
    assert (refused.stream_id, int.from_bytes(refused.payload, "big")) == (7, 0x7)
    assert upstream.requests == 3


async def test_the_listener_stops_accepting_at_max_connections(
    tmp_path, nursery, start_node
) -> None:
    node = await start_node(
        policies(tmp_path, await answering(nursery, b"ok"), "max_connections = 2\n")
    )
    address = node.outbound[0]
    first, second = await RawH2Client.connect(address), await RawH2Client.connect(address)
    await served_within(first)
    await served_within(second)
    exposed = await metrics(node.admin[0])
    assert 'meshnode_overload_active{reason="connections:outbound"} 1.0' in exposed
    waiting = await RawH2Client.connect(address)  # in the kernel's backlog, not served
    stream_id = await waiting.request("api", "/")
    with trio.move_on_after(0.5):
        await waiting.receive_until(h2.events.StreamEnded, stream_id)
        pytest.fail("a third connection was served at max_connections = 2")
    await first.aclose()
    with trio.fail_after(5):
        await waiting.receive_until(h2.events.StreamEnded, stream_id)


async def test_request_size_limits(tmp_path, nursery, start_node, hypercorn_upstream) -> None:
    node = await start_node(
        policies(tmp_path, hypercorn_upstream, 'max_request_body = "1KiB"\nmax_header_count = 20\n')
    )
    client = await RawH2Client.connect(node.outbound[0])
    declared = client.conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":path", "/echo"), (":scheme", "http"), (":authority", "api")]
    client.conn.send_headers(declared, [*headers, ("content-length", "2000")])
    await client.flush()
    with trio.fail_after(5):
        answer = await client.receive_until(h2.events.ResponseReceived, declared)
    assert dict(answer.headers)[b":status"] == b"413"

    streamed = await client.request("api", "/echo", end_stream=False)
    client.conn.send_data(streamed, b"x" * 1000)
    client.conn.send_data(streamed, b"x" * 1000)
    await client.flush()
    with trio.fail_after(5):
        reset = await client.receive_until(h2.events.StreamReset, streamed)
    assert reset.error_code == CANCEL

    many = client.conn.get_next_available_stream_id()
    client.conn.send_headers(
        many, [*headers[:1], *headers[1:], *[(f"x-{i}", "1") for i in range(30)]], end_stream=True
    )
    await client.flush()
    with trio.fail_after(5):
        answer = await client.receive_until(h2.events.ResponseReceived, many)
    assert dict(answer.headers)[b":status"] == b"431"

    long_field = client.conn.get_next_available_stream_id()
    client.conn.send_headers(long_field, [*headers, ("x-big", "v" * 9 * 1024)], end_stream=True)
    await client.flush()
    with trio.fail_after(5):
        answer = await client.receive_until(h2.events.ResponseReceived, long_field)
    assert dict(answer.headers)[b":status"] == b"431"  # one field over 8 KiB (nginx's bound)
    await served_within(client)


async def test_memory_overload_sheds_new_requests_until_under(tmp_path, nursery, running) -> None:
    directory = policies(tmp_path, await answering(nursery, b"ok"))
    node, addresses = await running(directory)
    client = await RawH2Client.connect(addresses.outbound[0])
    await served_within(client)
    with node.bus.subscribe() as events:
        with (directory / "node.toml").open("a") as toml:
            toml.write('\n[limits]\noverload_memory = "1MiB"\n')
        assert (await node.reload("test")).applied
        with trio.fail_after(5):
            event = await events.receive()
            while event.type != "overload":
                event = await events.receive()
        assert (event.reason, event.active) == ("memory", True)
        stream_id = await client.request("api", "/")
        answer = await client.receive_until(h2.events.ResponseReceived, stream_id)
        assert dict(answer.headers)[b":status"] == b"503"
        assert dict(answer.headers)[b"x-meshnode-error"] == b"overloaded"
        exposed = await metrics(addresses.admin[0])
        assert 'meshnode_overload_active{reason="memory"} 1.0' in exposed
        assert "meshnode_overload_shed_total 1.0" in exposed

        text = (directory / "node.toml").read_text().replace('"1MiB"', '"64GiB"')
        (directory / "node.toml").write_text(text)
        assert (await node.reload("test")).applied
        with trio.fail_after(5):
            event = await events.receive()
            while event.type != "overload":
                event = await events.receive()
        assert (event.reason, event.active) == ("memory", False)
    await served_within(client)


async def test_a_stream_over_the_limit_is_refused_and_the_connection_lives(
    tmp_path, nursery, start_node
) -> None:
    """RFC 9113 5.1.2: a stream past max_concurrent_streams is a stream error (h2 alone
    would end the connection): RST_STREAM REFUSED_STREAM, counted, and the streams open on
    the same connection are answered."""
    limits = "max_concurrent_streams = 4\n"
    node = await start_node(policies(tmp_path, await answering(nursery, b"ok"), limits))
    encoder = hpack.Encoder()
    post = [(b":method", b"POST"), *get(b"api")[1:]]
    opened = [
        request_frame(stream_id, post, end_stream=False, encoder=encoder)
        for stream_id in (1, 3, 5, 7)
    ]
    exchange = await attack(
        node.outbound[0],
        [
            *opened,
            request_frame(9, get(b"api"), encoder=encoder),
            bytes(DataFrame(9, data=b"late").serialize()),  # a frame of the refused stream
            *(
                bytes(DataFrame(i, data=b"", flags=["END_STREAM"]).serialize())
                for i in (1, 3, 5, 7)
            ),
        ],
        linger=1.0,
    )
    assert exchange.goaway() is None
    assert [(f.stream_id, f.error_code) for f in exchange.resets()][:1] == [(9, REFUSED_STREAM)]
    decoder = hpack.Decoder()
    answered = {
        frame.stream_id: dict(decoder.decode(frame.payload))[":status"]
        for frame in exchange.frames
        if frame.type == 0x1
    }
    assert answered == {1: "200", 3: "200", 5: "200", 7: "200"}
    counted = 'meshnode_protocol_violations_total{kind="stream-limit",listener="outbound"} 1.0'
    assert counted in await metrics(node.admin[0])


async def test_made_you_reset_refusals_are_budgeted(tmp_path, nursery, start_node) -> None:
    """Requests the node must refuse itself (an uppercase field name), 50 at a time (within
    max_concurrent_streams): each is answered 400 until the budget of refusals is spent."""
    limits = "[limits.frame_rates]\nresets_sent = 10\n"  # a burst of 100
    node = await start_node(policies(tmp_path, await answering(nursery, b"ok"), limits))
    stream = await trio.open_tcp_stream(node.outbound[0].host, node.outbound[0].port)
    await stream.send_all(HELLO + SETTINGS_ACK)
    encoder = hpack.Encoder()
    received = bytearray()
    goaway = None
    with trio.fail_after(10):
        for batch in range(10):
            frames = [
                request_frame(
                    2 * (50 * batch + i) + 1, [*get(b"api"), (b"X-Bad", b"1")], encoder=encoder
                )
                for i in range(50)
            ]
            try:
                await stream.send_all(b"".join(frames))
            except trio.BrokenResourceError:
                break
            while (answered := sum(f.type == 0x1 for f in parse_frames(bytes(received)))) < 50 * (
                batch + 1
            ):
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
            goaway = next((f for f in parse_frames(bytes(received)) if f.type == 0x7), None)
            if goaway is not None:
                break
    await stream.aclose()
    assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    assert 100 <= answered <= 150


async def test_an_upstream_that_floods_is_cut_off_like_any_peer(
    tmp_path, nursery, start_node
) -> None:
    def ping_flood(conn: h2.connection.H2Connection, event: h2.events.RequestReceived) -> None:
        for _ in range(3000):
            conn.ping(b"12345678")

    flooding = await nursery.start(RawH2Server(ping_flood).serve)
    directory = write_policies(
        tmp_path,
        {
            "api": upstream_toml("api", await answering(nursery, b"ok")),
            "bad": upstream_toml("bad", f"127.0.0.1:{flooding}"),
        },
    )
    node = await start_node(directory)
    status, _ = await curl_get(node.outbound[0], "bad")
    assert status == 502
    assert 'kind="ping-flood",listener="upstream"} 1.0' in await metrics(node.admin[0])
    assert (await curl_get(node.outbound[0], "api"))[0] == 200
