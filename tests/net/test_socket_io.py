"""Plain TCP sockets read and written in place: what leaves at once, and what waits its turn."""

from __future__ import annotations

import functools

import h11
import trio
import trio.testing

from meshnode.net.http1.client import H1ClientConnection
from meshnode.net.socket_io import TransportIO
from meshnode.net.violations import ConnectionRules
from tests.support.sockets import read_now, socket_pair

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
POST = [*GET[1:], (b":method", b"POST"), (b"content-length", b"40000")]


def test_only_a_plain_tcp_transport_is_written_in_place() -> None:
    transport, far = socket_pair()
    assert TransportIO(transport).can_send_now
    memory = TransportIO(trio.testing.memory_stream_pair()[0])
    assert not memory.can_send_now
    assert memory.send_now(b"x") == 0
    far.close()


async def test_a_closed_socket_is_never_written() -> None:
    transport, far = socket_pair()
    io = TransportIO(transport)
    await transport.aclose()
    assert io.send_now(b"x") == 0
    far.close()


async def test_nothing_is_written_in_place_while_the_writers_send_is_under_way(
    nursery: trio.Nursery,
) -> None:
    transport, far = socket_pair(buffer=4096)
    io = TransportIO(transport)
    nursery.start_soon(io.send_all, b"w" * 100_000)  # more than the socket takes: it waits
    await trio.testing.wait_all_tasks_blocked()
    assert not io.can_send_now
    assert io.send_now(b"x") == 0
    received = b""
    with trio.fail_after(5):
        while len(received) < 100_000:
            received += read_now(far)
            await trio.sleep(0)  # the writer sends as the far end makes room
    assert received == b"w" * 100_000
    await trio.testing.wait_all_tasks_blocked()
    assert io.can_send_now
    far.close()


def h1_client(transport: trio.SocketStream) -> H1ClientConnection:
    return H1ClientConnection(
        transport,
        rules=ConnectionRules("test"),
        peer="upstream",
        idle_timeout=60.0,
        on_idle=lambda connection: None,
    )


async def test_an_http1_request_leaves_when_it_ends_before_any_task_runs(
    nursery: trio.Nursery,
) -> None:
    transport, far = socket_pair()
    connection = h1_client(transport)
    nursery.start_soon(connection.run)
    await trio.testing.wait_all_tasks_blocked()
    connection.start(GET, end_stream=True)
    assert read_now(far).startswith(b"GET / HTTP/1.1\r\n")
    far.close()
    nursery.cancel_scope.cancel()


async def test_an_http1_body_the_socket_cannot_take_follows_in_order(
    nursery: trio.Nursery,
) -> None:
    transport, far = socket_pair(buffer=4096)
    connection = h1_client(transport)
    nursery.start_soon(connection.run)
    await trio.testing.wait_all_tasks_blocked()
    stream = connection.start(POST, end_stream=False)
    body = bytes(range(200)) * 200
    nursery.start_soon(functools.partial(stream.send_data, body, end_stream=True))
    await trio.testing.wait_all_tasks_blocked()
    parser = h11.Connection(h11.SERVER)
    received = b""
    with trio.fail_after(5):
        while True:
            arrived = read_now(far)
            if arrived:
                parser.receive_data(arrived)
            event = parser.next_event()
            if isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA:
                await trio.sleep(0)  # the writer sends as the far end makes room
    assert received == body
    far.close()
    nursery.cancel_scope.cancel()


async def test_bytes_read_before_come_first_then_the_socket_is_read_in_place() -> None:
    transport, far = socket_pair()
    io = TransportIO(transport, b"PRI * HTTP/2.0\r\n")
    far.sendall(b"the rest")
    assert await io.receive(65536) == b"PRI * HTTP/2.0\r\n"
    assert await io.receive(65536) == b"the rest"
    far.close()
    assert await io.receive(65536) == b""
