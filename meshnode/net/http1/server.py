"""Theory of operation: one HTTP/1.1 connection from a caller, served with h11.

Requests are read one at a time. Each becomes a ``Stream`` in HTTP/2 form and
goes to the same ``on_request`` handler an HTTP/2 session feeds, so the request
path is shared. The next request (pipelined or not) is not parsed until the
current response is complete, so answers go out in order; bytes a client
pipelines meanwhile wait in h11's buffer, bounded by the header size limit.

The reader keeps reading while a request is served, to notice a caller that
goes away (its stream is reset, which cancels the work and the upstream
stream). Received body data is handed back as window once the handler has
passed it on (``ack``): past ``stream_window`` bytes unacknowledged, the reader
stops reading the socket, so a slow upstream slows the caller (TCP pushes back).

A request h11 cannot parse, or that is ambiguous (``http1.request_to_h2``), is
still handed to the handler, marked ``malformed``: it answers 400 the way it
answers every mesh-made error, and the connection then closes. A response that
cannot be completed (the upstream broke mid-body) closes the connection: an
HTTP/1.1 client sees the body cut short, never a complete-looking one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio

from meshnode.errors import BadRequest
from meshnode.net.h2.validation import Malformed, check_request_within
from meshnode.net.http1.connection import H1Connection
from meshnode.net.http1.translation import (
    head_problem,
    is_websocket_upgrade,
    request_to_h2,
    response_to_h1,
    websocket_switch,
)
from meshnode.net.stream import CANCEL, END_OF_STREAM, Data, Headers, Stream, StreamReset, Trailers
from meshnode.net.violations import ConnectionRules

log = logging.getLogger(__name__)


class H1ServerSession(H1Connection):
    """A server side HTTP/1.1 connection: a ``StreamCarrier`` for one request at a time."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        on_request: Callable[[Stream], None],
        rules: ConnectionRules,
        peer: str = "peer",
        received: bytes = b"",
    ) -> None:
        """``received``: bytes already read from ``transport`` (to tell the protocol)."""
        super().__init__(transport, h11.SERVER, rules, peer, received)
        self._on_request = on_request
        self.requests_seen = 0
        self.closing = False  # finish the current request, then close
        self._response_done = trio.Event()
        self._watching: trio.CancelScope | None = None  # the read that watches for a hang-up
        self._answered = trio.Event()  # the response head went out (or never will)
        self._websocket_key: bytes | None = None  # the caller's, while its upgrade is pending
        self.tunnel = False  # switched to WebSocket: bytes both ways, no more HTTP
        self._continue_sent = False
        self._head_request = False  # the request being answered is a HEAD

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    await self._serve()
                    await self._flush()
                    nursery.cancel_scope.cancel()
        finally:
            self._connection_lost()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)

    def close_gracefully(self, error_code: int = 0) -> None:
        """Finish the request in flight (its response says ``connection: close``), then close;
        an idle connection closes at once."""
        self.closing = True
        if not self.streams:
            self._cancel_scope.cancel()

    def abort(self) -> None:
        self.dead = True
        self._cancel_scope.cancel()

    # -- reading requests --------------------------------------------------

    async def _serve(self) -> None:
        limits = self._limits
        while not self.closing:
            quiet = limits.idle_timeout if self.requests_seen else limits.first_request_timeout
            with trio.move_on_after(quiet) as idle:
                event = await self._next_event(first=True)
            if idle.cancelled_caught:
                return
            if not isinstance(event, h11.Request | Malformed):
                return  # the caller closed, or broke the protocol before a request began
            self.requests_seen += 1
            stream = self._start(event)
            if self._websocket_key is not None:
                await self._upgrade(stream)
                if self.tunnel:
                    return  # the tunnel has ended: so has the connection
            else:
                await self._read_body(stream)
            await self._response_done.wait()
            limit = limits.max_requests_per_connection
            if limit and self.requests_seen >= limit:
                self.closing = True
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # answered before the body was read, or the caller said close
            self.conn.start_next_cycle()
            self._response_done = trio.Event()
            self._answered = trio.Event()
            self._continue_sent = False

    async def _next_event(self, *, first: bool = False) -> object:
        """The next h11 event, reading as needed. A protocol error comes back as ``Malformed``
        (and the connection will close once it is answered)."""
        header_deadline = trio.current_time() + self._limits.header_timeout
        while True:
            problem = head_problem(self.conn)
            if problem is not None:
                self.closing = True
                return Malformed(400, problem)
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.closing = True
                return Malformed(exc.error_status_hint, f"malformed HTTP/1.1: {exc}")
            if event is not h11.NEED_DATA:
                return event
            # A started head must complete in header_timeout (slowloris); a body waits on the
            # stream's idle clock instead.
            started = first and bool(self.conn.trailing_data[0])
            timeout = (
                header_deadline - trio.current_time()
                if started
                else self._limits.stream_idle_timeout
            )
            with trio.move_on_after(max(timeout, 0)) as waited:
                data = await self._receive()
            if waited.cancelled_caught:
                if started:
                    self.rules.violations.record(
                        self.rules.where, "header-timeout", self.peer, "request head incomplete"
                    )
                return h11.ConnectionClosed()
            self.conn.receive_data(data)

    def _start(self, event: h11.Request | Malformed) -> Stream:
        """Make the request's stream and hand it to the handler."""
        checked: Headers | Malformed = event if isinstance(event, Malformed) else Malformed(400, "")
        self._head_request = isinstance(event, h11.Request) and event.method == b"HEAD"
        if isinstance(event, h11.Request):
            checked = request_to_h2(event, b"http")
            if is_websocket_upgrade(event):
                self._websocket_key = dict(event.headers).get(b"sec-websocket-key")
                if not self._websocket_key:
                    checked = Malformed(400, "a WebSocket upgrade without Sec-WebSocket-Key")
            if isinstance(checked, list):
                checked = check_request_within(checked, self._limits)
        stream = Stream(self, self.requests_seen, checked if isinstance(checked, list) else [])
        if isinstance(checked, Malformed):
            stream.malformed = checked
            self.closing = True
            self.rules.violations.record(
                self.rules.where, "malformed-request", self.peer, checked.reason
            )
        self.streams[stream.id] = stream
        self._on_request(stream)
        return stream

    async def _read_body(self, stream: Stream) -> None:
        """Hand the body to the stream as it arrives, then watch for the caller leaving until
        the response is complete."""
        if stream.malformed is not None:
            self._end_of_request(stream, None)
            await self._response_done.wait()  # nothing more is read from this caller
            return
        if self.conn.their_state is not h11.SEND_BODY:
            self._end_of_request(stream, None)
        while not stream.remote_closed and not stream.finished:
            await self._wait_for_window(stream)
            event = await self._next_event()
            if isinstance(event, h11.Data):
                stream.owed += len(event.data)
                stream._push(Data(bytes(event.data), len(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
                self._end_of_request(stream, trailers or None)
            elif isinstance(event, Malformed):  # a broken body: this request is refused
                self._refuse_midway(stream, event)
                return
            else:  # the caller went away mid-body
                self._fail(stream, CANCEL)
                return
        # The caller may hang up while its answer is produced: keep reading to notice (what
        # it pipelines meanwhile waits in h11), until the answer is complete.
        while not self._response_done.is_set():
            data = None
            with trio.CancelScope() as self._watching:
                data = await self._receive()
            self._watching = None
            if data is None:
                return  # the answer is complete
            if not data:
                self._fail(stream, CANCEL)  # the caller is gone: stop the work
                return
            self.conn.receive_data(data)
            if len(self.conn.trailing_data[0]) > self._limits.max_header_list_size:
                await self._response_done.wait()  # read no more until there is room

    async def _upgrade(self, stream: Stream) -> None:
        """A WebSocket upgrade: once the answer is a 200 (the tunnel is up upstream), the
        caller gets its 101 and the connection carries bytes both ways until either side
        ends; any other answer is an ordinary response to a request without a body."""
        event = await self._next_event()  # the end of the upgrade request (it has no body)
        if not isinstance(event, h11.EndOfMessage):
            self._fail(stream, CANCEL)
            return
        await self._answered.wait()
        if not self.tunnel:
            self._websocket_key = None
            self._end_of_request(stream, None)
            return
        first = bytes(self.conn.trailing_data[0])
        if first:
            stream.owed += len(first)
            stream._push(Data(first, len(first)))
        while not stream.finished and not stream.local_closed:
            await self._wait_for_window(stream)
            data = None
            with trio.CancelScope() as self._watching:
                data = await self._receive()
            self._watching = None
            if data is None or stream.finished:
                return  # the other side ended the tunnel
            if not data:  # the caller closed its side: the tunnel ends once the other does
                self._end_of_request(stream, None)
                while not stream.finished and not stream.local_closed:
                    await self._wait(stream, None)
                return
            stream.owed += len(data)
            stream._push(Data(data, len(data)))

    def _refuse_midway(self, stream: Stream, malformed: Malformed) -> None:
        """The body broke the protocol after the request was handed on: its work stops (the
        upstream stream is reset) and, if no answer has begun, the caller gets the 400."""
        self.violation("malformed-request", malformed.reason)
        self.closing = True
        answered = stream.headers_sent
        self._fail(stream, CANCEL)
        if answered:
            self.abort()
            return
        headers, body = BadRequest(malformed.reason).response()
        self._write(response_to_h1(headers, end_stream=False, close=True))
        if not self._head_request:
            self._write(h11.Data(data=body))
        self._write(h11.EndOfMessage())

    def _end_of_request(self, stream: Stream, trailers: Headers | None) -> None:
        stream.remote_closed = True
        stream._push(Trailers(trailers) if trailers else END_OF_STREAM)
        if trailers:
            stream._push(END_OF_STREAM)

    # -- the StreamCarrier side: what the handler calls --------------------

    def send_stream_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        self._check_open(stream)
        if self.tunnel:  # a tunnel has no trailers: they can only mean its end
            stream.local_closed = True
            self._pulse()
            if self._watching is not None:
                self._watching.cancel()
            return
        if stream.headers_sent:  # trailers: HTTP/1.1 carries them only on a chunked body
            self._end_message(stream, headers)
            return
        key = self._websocket_key
        if key is not None and headers[:1] == [(b":status", b"200")]:
            self._write(websocket_switch(headers, key))
            self.tunnel = True
            stream.status_sent = 200
            stream.headers_sent = True
            self._answered.set()
            return
        head = response_to_h1(headers, end_stream=end_stream, close=self.closing)
        if isinstance(head, h11.InformationalResponse):
            self._write(head)
            return
        stream.status_sent = head.status_code
        stream.headers_sent = True
        self._continue_sent = True  # a final answer replaces 100 Continue
        self._bodiless = self._head_request or head.status_code in (204, 304)
        # h11 frames an answer without a length as chunked, for an HTTP/1.1 caller only.
        self._chunked = (not self._bodiless and self.conn.their_http_version == b"1.1") and not any(
            name == b"content-length" for name, _ in head.headers
        )
        self._write(head)
        self._answered.set()
        if end_stream:
            self._end_message(stream, None)

    async def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if not self.tunnel:
            await self._send_body(stream, data, end_stream)
            return
        await self._send_raw(stream, data, end_stream)
        if end_stream and self._watching is not None:
            self._watching.cancel()  # the upstream ended the tunnel: so does this connection

    def reset_stream(self, stream: Stream, code: int) -> None:
        if stream.finished or self.dead:
            return
        if stream.local_closed:
            # Answered in full while the caller was still sending: it may stop; the unread
            # rest of the body means this connection cannot carry another request.
            self.closing = True
            stream._fail(StreamReset(stream, code))
            return
        self._fail(stream, code)
        self.abort()  # a response cut short: closing is the only way HTTP/1.1 can say so

    def charge_reset(self) -> None:
        """An HTTP/1.1 caller cannot make resets cheap: each refusal costs it the connection."""
        self.closing = True

    def stream_waiting(self, stream: Stream) -> None:
        """The handler wants the body: a caller that sent ``Expect: 100-continue`` gets its go."""
        if not self._continue_sent and self.conn.they_are_waiting_for_100_continue:
            self._continue_sent = True
            self._write(h11.InformationalResponse(status_code=100, headers=[]))

    # -- bookkeeping -------------------------------------------------------

    def _end_message(self, stream: Stream, trailers: Headers | None) -> None:
        super()._end_message(stream, trailers)
        if stream.remote_closed:
            self.streams.pop(stream.id, None)
        self._response_finished()

    def _response_finished(self) -> None:
        self._response_done.set()
        self._answered.set()
        if self._watching is not None:
            self._watching.cancel()

    def _connection_lost(self) -> None:
        super()._connection_lost()
        self._response_finished()

    def _fail(self, stream: Stream, code: int) -> None:
        stream._fail(StreamReset(stream, code))
        self.streams.pop(stream.id, None)
        self._response_finished()
        self._pulse()
