"""WebSocket pass-through with real clients and servers (trio-websocket): through one node
to an HTTP/1.1 upstream, and through two nodes chained with mTLS (extended CONNECT between
them), with the upstream's policies applied to the upgrade and limits to the tunnel."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from meshnode.policy import Address
from tests.conftest import upstream_toml, write_policies
from tests.support.mtls import mtls_chain

ROUTE = '[[routes]]\npath_prefix = "/chat"\n'  # trio-websocket's Host is the node's address


class EchoServer:
    """Echoes every message; counts handshakes and remembers how each connection ended."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.closed: list[int | None] = []
        self.paths: list[str] = []

    async def start(self, nursery: trio.Nursery) -> str:
        server = await nursery.start(
            functools.partial(serve_websocket, self._echo, "127.0.0.1", 0, ssl_context=None)
        )
        return f"127.0.0.1:{server.port}"

    async def wait_closed(self) -> None:
        """Until a connection has ended (the close handshake takes a moment after the client's
        side is done)."""
        with trio.fail_after(5):
            while not self.closed:
                await trio.sleep(0.01)

    async def _echo(self, request: WebSocketRequest) -> None:
        self.handshakes += 1
        self.paths.append(request.path)
        ws = await request.accept(subprotocol=(request.proposed_subprotocols or [None])[0])
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as closed:
            self.closed.append(closed.reason.code)


def websocket_upstream(name: str, address: str, extra: str = "") -> str:
    return upstream_toml(name, address, extra=ROUTE + extra).replace(
        'tls = "none"\n', 'tls = "none"\nprotocol = "http1"\n'
    )


async def echo_node(
    tmp_path: Path, nursery: trio.Nursery, running: Any, extra: str = ""
) -> tuple[EchoServer, Address]:
    """An echo server and a node that routes /chat to it (``extra``: policy sections)."""
    echo = EchoServer()
    address = await echo.start(nursery)
    directory = write_policies(tmp_path / "p", {"echo": websocket_upstream("echo", address, extra)})
    _, addresses = await running(directory)
    return echo, addresses.outbound[0]


@asynccontextmanager
async def chat(node: object, **options: object) -> AsyncIterator[WebSocketConnection]:
    with trio.fail_after(10):
        async with open_websocket_url(f"ws://{node}/chat", **options) as ws:  # type: ignore[arg-type]
            yield ws


async def exchange(ws: WebSocketConnection) -> list[str | bytes]:
    messages: list[str | bytes] = ["hello", "x" * 300_000, bytes(range(256)) * 64]
    answers = []
    for message in messages:
        await ws.send_message(message)
        answers.append(await ws.get_message())
    assert answers == messages
    return answers


async def test_an_echo_through_one_node(tmp_path, nursery, running) -> None:
    echo, node = await echo_node(tmp_path, nursery, running)
    async with chat(node, subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"  # negotiated end to end
        await exchange(ws)
    await echo.wait_closed()
    assert echo.closed == [1000]  # the client's close handshake reached the server
    assert echo.paths == ["/chat"]


async def test_an_echo_through_two_nodes_chained_with_mtls(tmp_path, nursery, running) -> None:
    echo = EchoServer()
    local = await echo.start(nursery)
    a = await mtls_chain(tmp_path, running, local, local_protocol="http1", route=ROUTE)
    async with chat(a.outbound[0]) as ws:
        await exchange(ws)
    assert echo.handshakes == 1


async def test_the_upgrade_is_rate_limited_and_guarded_by_the_breaker(
    tmp_path, nursery, running
) -> None:
    limits = "[rate_limit]\nrequests_per_second = 0.001\nburst = 1\n"
    echo, node = await echo_node(tmp_path, nursery, running, limits)
    async with chat(node) as ws:
        await exchange(ws)
    with pytest.raises(ConnectionRejected) as refused:
        async with chat(node):
            pass
    assert refused.value.status_code == 429
    assert dict(refused.value.headers)[b"x-meshnode-error"] == b"rate-limited"
    assert echo.handshakes == 1


async def test_a_refused_upgrade_is_an_ordinary_answer(tmp_path, nursery, running) -> None:
    _, node = await running(write_policies(tmp_path / "p", {}))
    with pytest.raises(ConnectionRejected) as refused:
        async with chat(node.outbound[0]):
            pass
    assert refused.value.status_code == 404  # no route: nothing was switched


async def test_an_idle_tunnel_is_closed(tmp_path, nursery, running) -> None:
    timeouts = '[timeout]\nrequest = "2s"\ntunnel_idle = "300ms"\n'
    echo, node = await echo_node(tmp_path, nursery, running, timeouts)
    async with chat(node) as ws:
        for _ in range(16):  # busy for longer than the request timeout, never idle long
            await trio.sleep(0.15)
            await ws.send_message("still here")
            assert await ws.get_message() == "still here"
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()  # silent: the node closes it
    assert closed.value.reason.code == 1001  # going away: a Close frame, not a cut
    await echo.wait_closed()
    assert echo.closed == [1001]  # the server was told too


async def test_drain_closes_tunnels_with_a_close_frame_at_its_deadline(
    tmp_path, nursery, running
) -> None:
    echo = EchoServer()
    address = await echo.start(nursery)
    directory = write_policies(
        tmp_path / "p", {"echo": websocket_upstream("echo", address)}, drain="2s"
    )
    node, addresses = await running(directory)
    async with chat(addresses.outbound[0]) as ws:
        await exchange(ws)
        node.request_drain(then_exit=False)
        started = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                while True:  # the tunnel keeps working while the node drains
                    await ws.send_message("during the drain")
                    assert await ws.get_message() == "during the drain"
                    await trio.sleep(0.05)
        assert 0.9 <= trio.current_time() - started < 2.0  # just before the deadline
    assert closed.value.reason.code == 1001
    await echo.wait_closed()
    assert echo.closed == [1001]


async def test_a_tunnel_ends_at_its_lifetime(tmp_path, nursery, running) -> None:
    timeouts = '[timeout]\ntunnel_lifetime = "1s"\n'
    _, node = await echo_node(tmp_path, nursery, running, timeouts)
    async with chat(node) as ws:
        started = trio.current_time()
        with pytest.raises(ConnectionClosed):
            with trio.fail_after(5):
                while True:
                    await ws.send_message("ping")
                    await ws.get_message()
                    await trio.sleep(0.1)
        assert trio.current_time() - started >= 0.9


async def test_an_upgrade_from_a_caller_not_allowed_is_forbidden(
    tmp_path, nursery, running
) -> None:
    echo = EchoServer()
    local = await echo.start(nursery)
    a = await mtls_chain(
        tmp_path, running, local, allowed="node-c", local_protocol="http1", route=ROUTE
    )
    with pytest.raises(ConnectionRejected) as refused:
        async with chat(a.outbound[0]):
            pass
    assert refused.value.status_code == 403
    assert dict(refused.value.headers)[b"x-meshnode-error"] == b"forbidden"
    assert echo.handshakes == 0


async def test_a_caller_that_half_closes_gets_its_connection_closed(
    tmp_path, nursery, running
) -> None:
    """Found by fuzz/http1.py: once the caller had ended its side and the upstream then ended
    its own, the node never noticed and held the connection open."""
    _, node = await echo_node(tmp_path, nursery, running)
    stream = await trio.open_tcp_stream(node.host, node.port)
    async with stream:
        await stream.send_all(
            b"GET /chat HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
            assert received.startswith(b"HTTP/1.1 101")
            await stream.send_eof()
            while await stream.receive_some(4096):  # until the node closes the connection
                pass
