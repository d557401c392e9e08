"""Two H2Sessions talking over an in-memory stream: flow control, resets, GOAWAY."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import hpack
import pytest
import trio
import trio.testing
from hyperframe.frame import Frame, GoAwayFrame

from meshnode.net.session import (
    END_OF_STREAM,
    Data,
    H2Session,
    ResponseHead,
    Stream,
    StreamReset,
)
from meshnode.net.violations import ConnectionRules
from meshnode.policy.models import Limits
from meshnode.policy.units import Duration

REQUEST = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]


class Pair:
    def __init__(
        self,
        nursery: trio.Nursery,
        on_request: Callable[[Stream], None],
        limits: Limits | None = None,
    ) -> None:
        """``limits`` hold the server side to them (the client keeps the defaults)."""
        client_end, server_end = trio.testing.memory_stream_pair()
        self.client = H2Session(client_end, client_side=True)
        rules = ConnectionRules("test", limits or Limits())
        self.server = H2Session(server_end, client_side=False, on_request=on_request, rules=rules)
        self.nursery = nursery

    async def start(self) -> None:
        await self.nursery.start(self.server.run)
        await self.nursery.start(self.client.run)


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[tuple[Pair, list[Stream]]]:
    received: list[Stream] = []
    connection = Pair(nursery, received.append)
    await connection.start()
    yield connection, received
    nursery.cancel_scope.cancel()


async def read_all(stream: Stream) -> list[object]:
    items: list[object] = []
    while True:
        item = await stream.receive()
        items.append(item)
        if isinstance(item, Data):
            stream.ack(item.flow_length)
        if item is END_OF_STREAM:
            return items


async def test_request_and_response_with_body_and_trailers(pair) -> None:
    connection, received = pair
    request = connection.client.open_stream(REQUEST, end_stream=False)
    await request.send_data(b"ping")
    await request.send_headers([(b"x-sum", b"1")], end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    (server_stream,) = received
    assert dict(server_stream.headers)[b":path"] == b"/"
    items = await read_all(server_stream)
    assert [type(i).__name__ for i in items] == ["Data", "Trailers", "EndOfStream"]
    await server_stream.send_headers([(b":status", b"200")])
    await server_stream.send_data(b"pong", end_stream=True)
    head = await request.receive()
    assert isinstance(head, ResponseHead)
    assert (await request.receive()) == Data(b"pong", 4)
    assert (await request.receive()) is END_OF_STREAM
    assert not connection.client.streams
    assert not connection.server.streams


async def test_a_reader_that_does_not_ack_stops_the_sender_at_the_window(pair) -> None:
    connection, received = pair
    request = connection.client.open_stream(REQUEST, end_stream=False)
    sent = 0

    async def send_forever() -> None:
        nonlocal sent
        while True:
            await request.send_data(b"z" * 16384)
            sent += 16384

    connection.nursery.start_soon(send_forever)
    await trio.testing.wait_all_tasks_blocked()
    window = Limits().stream_window
    assert window - 16384 <= sent <= window
    (server_stream,) = received
    buffered = 0
    while server_stream._items:
        item = await server_stream.receive()
        assert isinstance(item, Data)
        buffered += len(item.data)
        server_stream.ack(item.flow_length)
    await trio.testing.wait_all_tasks_blocked()
    assert sent > buffered  # acknowledging opened the window again


async def test_a_client_reset_cancels_the_server_work(pair) -> None:
    connection, received = pair
    request = connection.client.open_stream(REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    (server_stream,) = received
    cancelled = trio.Event()

    async def serve() -> None:
        with trio.CancelScope() as scope:
            server_stream.cancel_scope = scope
            await trio.sleep_forever()
        cancelled.set()

    connection.nursery.start_soon(serve)
    await trio.testing.wait_all_tasks_blocked()
    request.reset()
    with trio.fail_after(1):
        await cancelled.wait()
    with pytest.raises(StreamReset):
        await server_stream.send_headers([(b":status", b"200")])


async def test_graceful_goaway_lets_streams_in_flight_finish(pair) -> None:
    connection, received = pair
    request = connection.client.open_stream(REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    connection.server.close_gracefully()
    await trio.testing.wait_all_tasks_blocked()
    assert not connection.client.accepts_streams
    (server_stream,) = received
    await server_stream.send_headers([(b":status", b"204")], end_stream=True)
    head = await request.receive()
    assert isinstance(head, ResponseHead)
    assert (await request.receive()) is END_OF_STREAM
    await trio.testing.wait_all_tasks_blocked()
    assert connection.server.dead
    assert connection.client.dead


async def test_streams_above_goaway_last_id_are_refused(pair) -> None:
    connection, received = pair
    first = connection.client.open_stream(REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    connection.server.close_gracefully()
    second = connection.client.open_stream(REQUEST, end_stream=True)  # crosses the GOAWAY
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(StreamReset) as caught:
        await second.receive()
    assert caught.value.refused
    assert len(received) == 1
    assert first.id in connection.client.streams


async def test_connection_loss_resets_every_stream(pair) -> None:
    connection, _ = pair
    request = connection.client.open_stream(REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    connection.server.abort()
    with pytest.raises(StreamReset) as caught:
        await request.receive()
    assert caught.value.connection_lost


async def test_oversized_frame_ends_only_that_connection(nursery: trio.Nursery) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    server = H2Session(server_end, client_side=False, on_request=lambda stream: None)
    await nursery.start(server.run)
    await client_end.send_all(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + (2**24 - 1).to_bytes(3, "big") + b"\x00" * 6
    )
    await trio.testing.wait_all_tasks_blocked()
    assert server.dead
    sent = b""
    while chunk := await client_end.receive_some(65536):
        sent += chunk
    goaways = [frame for frame in frames(sent) if isinstance(frame, GoAwayFrame)]
    assert [frame.error_code for frame in goaways] == [0x6]  # FRAME_SIZE_ERROR


def frames(data: bytes) -> list[Frame]:
    parsed = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        parsed.append(frame)
        data = data[9 + length :]
    return parsed


async def timed_pair(nursery: trio.Nursery, limits: Limits) -> tuple[Pair, list[Stream]]:
    received: list[Stream] = []
    connection = Pair(nursery, received.append, limits)
    await connection.start()
    return connection, received


async def test_a_connection_that_never_asks_is_told_to_go(
    nursery: trio.Nursery, autojump_clock
) -> None:
    connection, _ = await timed_pair(nursery, Limits(first_request_timeout=Duration(30)))
    await trio.sleep(29)
    assert connection.client.goaway_received is None
    await trio.sleep(2)
    assert connection.client.goaway_received is not None
    assert connection.client.goaway_received.error_code == 0


async def test_an_idle_connection_is_told_to_go_after_its_last_stream(
    nursery: trio.Nursery, autojump_clock
) -> None:
    connection, received = await timed_pair(nursery, Limits(idle_timeout=Duration(100)))
    request = connection.client.open_stream(REQUEST, end_stream=True)
    await trio.sleep(90)  # an open stream is not idleness
    (served,) = received
    await served.send_headers([(b":status", b"204")], end_stream=True)
    await read_all(request)
    await trio.sleep(99)
    assert connection.client.goaway_received is None
    await trio.sleep(2)
    assert connection.client.goaway_received is not None


async def test_a_stream_waiting_on_its_peer_is_reset_at_the_stream_idle_timeout(
    nursery: trio.Nursery, autojump_clock
) -> None:
    connection, received = await timed_pair(nursery, Limits(stream_idle_timeout=Duration(60)))
    request = connection.client.open_stream(REQUEST, end_stream=False)
    await request.send_data(b"part of a body")
    await trio.testing.wait_all_tasks_blocked()
    (served,) = received
    assert isinstance(await served.receive(), Data)
    with pytest.raises(StreamReset) as caught:
        await served.receive()  # the rest never comes
    assert caught.value.code == 0x8
    assert 60 <= trio.current_time() - served.session.started < 91
    with pytest.raises(StreamReset):
        await request.receive()  # and the peer was told


async def test_credentials_cross_the_connection_never_indexed(pair) -> None:
    connection, received = pair
    sent: list[bytes] = []
    encode = connection.client.conn.encoder.encode

    def recording(headers: list[tuple[bytes, bytes]]) -> bytes:
        sent.append(encode(headers))
        return sent[-1]

    connection.client.conn.encoder.encode = recording
    connection.client.open_stream([*REQUEST, (b"authorization", b"Bearer x")], end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    (server_stream,) = received
    assert (b"authorization", b"Bearer x") in server_stream.headers
    decoded = hpack.Decoder().decode(sent[0], raw=True)
    assert [type(field) for field in decoded][-1] is hpack.NeverIndexedHeaderTuple
