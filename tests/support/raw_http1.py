"""HTTP/1.1 over raw sockets: a client that sends bytes exactly as written (smuggling
attempts, pipelines), and an upstream that answers bytes exactly as written (ambiguous or
broken responses)."""

from __future__ import annotations

from collections.abc import Callable

import h11
import trio


async def send_raw(address: object, raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a fresh connection; everything the node answers until it closes."""
    host, port = str(address).rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(raw)
        with trio.move_on_after(timeout):
            while data := await stream.receive_some(65536):
                received += data
    return received


def responses_in(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every complete response in ``raw``, in order: status, headers, body."""
    conn = h11.Connection(h11.CLIENT)
    found: list[tuple[int, dict[bytes, bytes], bytes]] = []
    conn.receive_data(raw)
    conn.receive_data(b"")
    head: h11.Response | None = None
    body = b""
    while True:
        if conn.our_state is h11.IDLE and conn.their_state is h11.IDLE:
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return found
        if isinstance(event, h11.Response):
            head, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            found.append((head.status_code, dict(head.headers), body))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return found
            conn.start_next_cycle()
        else:
            return found


class ScriptedUpstream:
    """An HTTP/1.1 upstream that answers each request with ``answer(n)`` (bytes as written),
    then closes the connection if ``close_after`` says so. An answer of None: the request
    is never answered, and its connection is held until the client closes it."""

    def __init__(self, answer: Callable[[int], bytes | None], *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests = 0
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        task_status.started(f"127.0.0.1:{port}")
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffered = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffered += data
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                self.requests += 1
                answer = self.answer(self.requests)
                if answer is None:
                    while await stream.receive_some(65536):
                        pass
                    return
                await stream.send_all(answer)
                if self.close_after:
                    return
