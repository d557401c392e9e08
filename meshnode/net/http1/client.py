"""Theory of operation: one keep-alive HTTP/1.1 connection to an upstream, one exchange at
a time.

``start`` sends a request head and hands back the request's ``Stream``; the
connection's own task reads the response into it (head, body, trailers), with
the same window rule as HTTP/2: past ``stream_window`` bytes not yet passed on,
it stops reading. Once both the request and the response ended cleanly the
connection is offered back (``on_idle``) for the next request; anything else
(a reset, the upstream closing, a response cut short, an answer that came
before the whole body was sent) retires it, so a connection that was
mid-response when it failed is never reused. An idle connection closes itself
after ``idle_timeout``.

A response that cannot be relayed faithfully (ambiguous framing, an h11
protocol error) fails the stream like a reset: the request path sees an
upstream failure, never a half-understood answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio

from meshnode.net.h2.validation import WEBSOCKET
from meshnode.net.http1.connection import H1Connection
from meshnode.net.http1.translation import (
    head_problem,
    new_websocket_key,
    request_to_h1,
    response_from_h1,
    websocket_accepted,
)
from meshnode.net.stream import (
    CANCEL,
    END_OF_STREAM,
    PROTOCOL_ERROR,
    STALE,
    Data,
    Headers,
    ResponseHead,
    Stream,
    StreamReset,
    Trailers,
)
from meshnode.net.violations import ConnectionRules

log = logging.getLogger(__name__)


class H1ClientConnection(H1Connection):
    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        rules: ConnectionRules,
        peer: str,
        idle_timeout: float,
        on_idle: Callable[[H1ClientConnection], None],
    ) -> None:
        super().__init__(transport, h11.CLIENT, rules, peer)
        self.exchanges = 0
        self._idle_timeout = idle_timeout
        self._on_idle = on_idle
        self._started = trio.Event()
        self._websocket_key: bytes | None = None  # ours, while a WebSocket upgrade is pending
        self.tunnel = False  # switched to WebSocket: bytes both ways until the end
        self._answered = False  # whether any byte of the exchange's response came

    @property
    def usable(self) -> bool:
        return not self.dead and not self.streams and self.conn.our_state is h11.IDLE

    def start(self, headers: Headers, *, end_stream: bool) -> Stream:
        """Send a request head; the caller checked ``usable``."""
        self.exchanges += 1
        self._answered = False
        stream = Stream(self, self.exchanges, None)
        self.streams[stream.id] = stream
        stream.headers_sent = True
        if WEBSOCKET in headers:  # the opening handshake; the tunnel's bytes follow the 101
            key = self._websocket_key = new_websocket_key()
            self._write(request_to_h1(headers, has_body=False, websocket_key=key))
            self._write(h11.EndOfMessage())
        else:
            request = request_to_h1(headers, has_body=not end_stream)
            self._chunked = (b"transfer-encoding", b"chunked") in request.headers
            self._write(request)
            if end_stream:
                self._end_message(stream, None)
        self._started.set()
        return stream

    async def run(self) -> None:
        """Carry exchanges until the connection is retired; it is closed on return."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    while await self._next_exchange():
                        pass
                    await self._flush()
                    nursery.cancel_scope.cancel()
        finally:
            self.dead = True
            self._connection_lost()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)

    def close(self) -> None:
        """Retire the connection: idle now, or once its exchange ends."""
        if not self.streams:
            self._cancel_scope.cancel()
        self.dead = True

    async def _next_exchange(self) -> bool:
        """Wait for a request (up to the idle timeout), read its response; True if the
        connection may carry another."""
        with trio.move_on_after(self._idle_timeout):
            await self._started.wait()
        if not self._started.is_set() or self.dead:
            return False
        self._started = trio.Event()
        (stream,) = self.streams.values()
        if not await self._read_response(stream):
            return False
        while not stream.local_closed and not stream.finished:
            await self._wait(stream, None)  # the request body is still going out
        self.streams.pop(stream.id, None)
        if stream.error is not None or self.dead:
            return False
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False  # either side said close
        self.conn.start_next_cycle()
        self._on_idle(self)
        return True

    async def _read_response(self, stream: Stream) -> bool:
        """Relay one response into ``stream``; False if the connection cannot go on."""
        closed = False  # the upstream closed its side: what h11 still makes of it is all
        while True:
            problem = head_problem(self.conn)
            if problem is not None:
                return self._refuse(stream, problem)
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                if closed:  # closed before the response was complete
                    stream._fail(self._lost(stream))
                    return False
                return self._refuse(stream, f"malformed HTTP/1.1 response: {exc}")
            if event is h11.NEED_DATA:
                with trio.move_on_after(self._limits.stream_idle_timeout) as waited:
                    data = await self._receive()
                if waited.cancelled_caught or stream.finished:
                    return False
                closed = not data
                self._answered = self._answered or not closed
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                if self._websocket_key is not None and event.status_code < 300:
                    return self._refuse(stream, "a WebSocket upgrade answered without switching")
                head = response_from_h1(event)
                if isinstance(head, str):
                    return self._refuse(stream, head)
                stream._push(ResponseHead(head))
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                key = self._websocket_key
                accepted = (
                    websocket_accepted(event, key)
                    if key is not None
                    else "a switch to a protocol never asked for"
                )
                if isinstance(accepted, str):
                    return self._refuse(stream, accepted)
                stream._push(ResponseHead(accepted))
                self.tunnel = True
                await self._carry_tunnel(stream)
                return False
            elif isinstance(event, h11.Data):
                stream.owed += len(event.data)
                stream._push(Data(bytes(event.data), len(event.data)))
                await self._wait_for_window(stream)
            elif isinstance(event, h11.EndOfMessage):
                trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
                if trailers:
                    stream._push(Trailers(trailers))
                stream.remote_closed = True
                stream._push(END_OF_STREAM)
                return True
            elif isinstance(event, h11.ConnectionClosed):
                stream._fail(self._lost(stream))
                return False
            # InformationalResponse (100 Continue, 103): nothing to relay

    async def _carry_tunnel(self, stream: Stream) -> None:
        """The upstream's tunnel bytes into the stream, until it closes (the connection then
        ends: it never carries HTTP again)."""
        data = bytes(self.conn.trailing_data[0])
        while True:
            if data:
                stream.owed += len(data)
                stream._push(Data(data, len(data)))
                await self._wait_for_window(stream)
            data = await self._receive()
            if not data:
                break
        stream.remote_closed = True
        stream._push(END_OF_STREAM)
        while not stream.finished and not stream.local_closed:
            await self._wait(stream, None)

    def _lost(self, stream: Stream) -> StreamReset:
        """A reused keep-alive connection that closed before a byte of the answer came was
        closed by the upstream as idle while the request was on its way: the stale
        keep-alive race, after which a request safe to repeat is sent again."""
        stale = self.exchanges > 1 and not self._answered
        return StreamReset(stream, CANCEL, connection_lost=True, lifecycle=STALE if stale else None)

    def _refuse(self, stream: Stream, problem: str) -> bool:
        self.violation("malformed-response", problem)
        stream._fail(StreamReset(stream, PROTOCOL_ERROR))
        return False

    # -- the StreamCarrier side: what the request path calls ---------------

    def send_stream_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        """Request trailers (the request head went out in ``start``)."""
        self._check_open(stream)
        self._end_message(stream, headers)

    async def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if self._websocket_key is not None:
            await self._send_raw(stream, data, end_stream)
            return
        await self._send_body(stream, data, end_stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        if stream.finished:
            return
        stream._fail(StreamReset(stream, code))
        self.dead = True  # the exchange is abandoned mid-way: the connection cannot be reused
        self._cancel_scope.cancel()

    def charge_reset(self) -> None:
        """Resets are budgeted against hostile callers; an upstream's are its failures."""

    def stream_waiting(self, stream: Stream) -> None:
        """Nothing to ask for: the upstream sends its response unprompted."""
