"""The in-process stream pair: the rules of an HTTP/2 stream, without a connection."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshnode.net.local import LocalExchange
from meshnode.net.stream import (
    CANCEL,
    END_OF_STREAM,
    NO_ERROR,
    Data,
    ResponseHead,
    StreamReset,
    Trailers,
)

REQUEST = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]


async def test_a_request_and_its_answer_cross_over() -> None:
    exchange = LocalExchange(REQUEST, end_stream=False)
    client, server = exchange.client, exchange.server
    assert server.headers == REQUEST and server.malformed is None
    await client.send_data(b"body", end_stream=True)
    assert await server.receive() == Data(b"body", 4)
    assert server.consume_end()
    await server.send_headers([(b":status", b"200")])
    await server.send_data(b"answer")
    await server.send_headers([(b"grpc-status", b"0")], end_stream=True)
    assert server.status_sent == 200
    assert await client.receive() == ResponseHead([(b":status", b"200")])
    assert await client.receive() == Data(b"answer", 6)
    assert await client.receive() == Trailers([(b"grpc-status", b"0")])
    assert await client.receive() is END_OF_STREAM
    assert client.finished and server.finished


async def test_a_request_without_a_body_ends_at_once() -> None:
    exchange = LocalExchange(REQUEST, end_stream=True)
    assert exchange.server.consume_end()


async def test_a_sender_waits_for_the_reader_once_a_window_is_in_flight() -> None:
    exchange = LocalExchange(REQUEST, end_stream=False, window=10)
    client, server = exchange.client, exchange.server
    await client.send_data(b"x" * 10)
    sent = trio.Event()

    async def send_more() -> None:
        await client.send_data(b"y")
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # ten bytes unacknowledged: the window is full
        item = await server.receive()
        assert isinstance(item, Data)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # received is not passed on: still owed
        server.ack(item.flow_length)
        await trio.testing.wait_all_tasks_blocked()
        assert sent.is_set()


async def test_a_client_reset_cancels_the_work_serving_it() -> None:
    exchange = LocalExchange(REQUEST, end_stream=True)
    client, server = exchange.client, exchange.server
    with trio.CancelScope() as scope:
        server.cancel_scope = scope
        client.reset(CANCEL)
        await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(StreamReset) as reset:
        await server.send_headers([(b":status", b"200")])
    assert reset.value.code == CANCEL


async def test_what_arrived_before_a_reset_is_still_read() -> None:
    exchange = LocalExchange(REQUEST, end_stream=False)
    client, server = exchange.client, exchange.server
    await server.send_headers([(b":status", b"413")], end_stream=True)
    server.reset(NO_ERROR)  # answered while the client was still sending: stop
    with pytest.raises(StreamReset):
        await client.send_data(b"more")
    assert await client.receive() == ResponseHead([(b":status", b"413")])
    assert await client.receive() is END_OF_STREAM


async def test_malformed_headers_are_marked_for_a_400() -> None:
    exchange = LocalExchange([*REQUEST, (b"connection", b"close")], end_stream=True)
    assert exchange.server.malformed is not None
    assert "connection" in exchange.server.malformed.reason
