"""Two H2Sessions talking over an in-memory stream: flow control, resets, GOAWAY."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
import trio
import trio.testing
from hyperframe.frame import Frame, GoAwayFrame

from meshnode.net.h2.session import H2Session
from meshnode.net.stream import END_OF_STREAM, Data, ResponseHead, Stream, StreamReset
from meshnode.net.violations import ConnectionRules
from meshnode.policy.models import Limits
from meshnode.policy.units import Duration
from tests.support.sockets import read_now, socket_pair

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


class SocketPeer:
    """A client session on a real socket, and the far end as a plain non-blocking socket
    read in place (no task of its own), parsed by h2 as a server would."""

    def __init__(self, nursery: trio.Nursery, buffer: int | None = None) -> None:
        transport, self.far = socket_pair(buffer)
        self.session = H2Session(transport, client_side=True)
        self.parser = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.events: list[h2.events.Event] = []
        self.nursery = nursery

    async def start(self) -> None:
        await self.nursery.start(self.session.run)
        await trio.testing.wait_all_tasks_blocked()
        self.read_now()  # the preface and settings
        self.events.clear()

    def read_now(self) -> int:
        """Read what has arrived, without letting any task run; how many bytes."""
        data = read_now(self.far)
        if data:
            self.events += self.parser.receive_data(data)
        return len(data)


@pytest.fixture
async def socket_peer(nursery: trio.Nursery) -> AsyncIterator[SocketPeer]:
    peer = SocketPeer(nursery)
    await peer.start()
    yield peer
    nursery.cancel_scope.cancel()
    peer.far.close()


async def test_a_lone_streams_request_leaves_before_any_task_runs(socket_peer) -> None:
    socket_peer.session.open_stream(REQUEST, end_stream=True)
    assert socket_peer.read_now() > 0  # written by the caller, not by the writer task
    assert [type(e).__name__ for e in socket_peer.events] == ["RequestReceived", "StreamEnded"]


async def test_with_another_stream_in_flight_the_writer_sends_them_together(socket_peer) -> None:
    socket_peer.session.open_stream(REQUEST, end_stream=True)
    socket_peer.read_now()
    socket_peer.session.open_stream(REQUEST, end_stream=True)
    socket_peer.session.open_stream(REQUEST, end_stream=True)
    assert socket_peer.read_now() == 0  # queued for the writer
    await trio.testing.wait_all_tasks_blocked()
    assert socket_peer.read_now() > 0
    requests = [e.stream_id for e in socket_peer.events if isinstance(e, h2.events.RequestReceived)]
    assert requests == [1, 3, 5]


async def test_what_the_socket_cannot_take_now_follows_in_order(nursery: trio.Nursery) -> None:
    peer = SocketPeer(nursery, buffer=4096)
    await peer.start()
    body = bytes(range(256)) * 200  # 51,200 bytes: far more than the socket takes at once
    request = peer.session.open_stream(REQUEST, end_stream=False)
    sending = trio.Event()

    async def send() -> None:
        await request.send_data(body, end_stream=True)
        sending.set()

    nursery.start_soon(send)
    await trio.testing.wait_all_tasks_blocked()
    assert 0 < peer.read_now() < len(body)  # the rest waits with the writer for room
    with trio.fail_after(5):
        while not any(isinstance(event, h2.events.StreamEnded) for event in peer.events):
            peer.read_now()
            await trio.sleep(0)  # the writer sends as the far end makes room
    received = b"".join(e.data for e in peer.events if isinstance(e, h2.events.DataReceived))
    assert received == body
    assert sending.is_set()
    assert isinstance(peer.events[-1], h2.events.StreamEnded)
    nursery.cancel_scope.cancel()
    peer.far.close()


async def test_a_send_on_a_memory_stream_waits_for_the_writer(pair) -> None:
    connection, received = pair
    connection.client.open_stream(REQUEST, end_stream=True)
    assert not received  # nothing can be written in place: no socket
    await trio.testing.wait_all_tasks_blocked()
    assert len(received) == 1


async def test_a_socket_read_in_place_delivers_the_answer_and_then_the_close(socket_peer) -> None:
    request = socket_peer.session.open_stream(REQUEST, end_stream=True)
    socket_peer.read_now()
    parser = socket_peer.parser
    parser.initiate_connection()
    parser.send_headers(request.id, [(b":status", b"200")])
    parser.send_data(request.id, b"pong", end_stream=True)
    socket_peer.far.sendall(parser.data_to_send())
    with trio.fail_after(5):
        items = await read_all(request)
    assert [type(item).__name__ for item in items] == ["ResponseHead", "Data", "EndOfStream"]
    second = socket_peer.session.open_stream(REQUEST, end_stream=True)
    socket_peer.far.close()
    with trio.fail_after(5), pytest.raises(StreamReset) as lost:
        await second.receive()
    assert lost.value.connection_lost


async def test_a_field_sent_never_indexed_arrives_marked_so(pair) -> None:
    connection, received = pair
    secret = hpack.NeverIndexedHeaderTuple(b"x-api-key", b"k-1")
    connection.client.open_stream([*REQUEST, secret], end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    (server_stream,) = received
    assert server_stream.headers is not None
    assert type(server_stream.headers[-1]) is hpack.NeverIndexedHeaderTuple


async def test_an_ended_session_is_freed_without_the_cyclic_collector() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    session = H2Session(server_end, client_side=False, on_request=lambda stream: None)
    h2_connection = weakref.ref(session.conn)
    gc.disable()
    try:
        async with trio.open_nursery() as inner:
            await inner.start(session.run)
            await client_end.aclose()  # the peer goes: the session ends
        del session
        assert h2_connection() is None  # freed by reference counting alone
    finally:
        gc.enable()


async def test_a_body_s_end_waits_while_the_peer_holds_the_window_below_zero(
    socket_peer, nursery: trio.Nursery
) -> None:
    """RFC 9113 6.9.2: the peer's smaller SETTINGS_INITIAL_WINDOW_SIZE can leave a stream's
    window below zero; even the empty DATA frame that ends the body waits for a
    WINDOW_UPDATE (h2, as this peer, treats one sent earlier as a flow-control error)."""
    peer = socket_peer
    stream = peer.session.open_stream(REQUEST, end_stream=False)
    await stream.send_data(b"z" * 100, end_stream=False)
    peer.parser.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    peer.far.send(peer.parser.data_to_send())
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(stream.end)
    await trio.testing.wait_all_tasks_blocked()
    peer.read_now()
    assert "StreamEnded" not in [type(e).__name__ for e in peer.events]
    peer.parser.increment_flow_control_window(90, stream_id=stream.id)
    peer.far.send(peer.parser.data_to_send())
    await trio.testing.wait_all_tasks_blocked()
    peer.read_now()
    assert [type(e).__name__ for e in peer.events][-1] == "StreamEnded"
