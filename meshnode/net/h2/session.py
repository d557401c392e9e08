"""Theory of operation: one HTTP/2 connection over any trio stream, either side.

One reader task feeds received bytes through the frame gate into the codec
(``codec.py``) and turns its events into per-stream items; one writer task flushes
whatever the codec has queued in a single ``send_all`` (so replies to many streams batch naturally).
The one exception is latency's: a stream alone on an idle plain TCP connection
writes its last frames itself, at once (``_send_queued``), and the reader reads
such a socket in place (``net/socket_io.py``). Nothing else touches the
transport, and no task is started per stream here: a
server session hands each new request stream to ``on_request``, a client
session hands streams to whoever called ``open_stream``.

Flow control runs end to end. Received DATA is acknowledged (window handed
back) only when the consumer calls ``Stream.ack`` after it has passed the bytes
on, so a slow reader on one side slows the writer on the other. Senders wait
for window, and for the writer to drain once more than ``write_buffer`` bytes are
queued, so a peer that does not read costs bounded memory.

Codec errors never leave this module: a send on a stream the peer already
reset raises ``StreamReset``, and anything that breaks the connection ends this
session alone (its streams see ``StreamReset(connection_lost=True)``).

The peer is held to ``ConnectionRules.limits``: the frame gate's budgets, a
header check per request (a malformed one fails its own stream, not the
connection), and one watcher task per connection that enforces the timeouts
(SETTINGS acknowledgement, header completion, first request, idle, and streams
waiting on the peer) by waking at the next deadline, never per stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

import trio

from meshnode.net.h2.codec import (
    Codec,
    DataReceived,
    Event,
    ProtocolViolation,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamUnusable,
    TrailersReceived,
    WindowUpdated,
)
from meshnode.net.h2.codec import StreamReset as CodecStreamReset
from meshnode.net.h2.framing import (
    ENHANCE_YOUR_CALM,
    WINDOW_UPDATES_PER_DATA_FRAME,
    FrameError,
    FrameGate,
    GoAwayReceived,
    goaway_frame,
)
from meshnode.net.h2.validation import (
    WEBSOCKET,
    Malformed,
    check_trailers,
    request_checks,
    response_checks,
)
from meshnode.net.pulse import Pulse
from meshnode.net.socket_io import RECEIVE_SIZE, TransportIO
from meshnode.net.stream import (
    CANCEL,
    END_OF_STREAM,
    GOAWAY,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED,
    REFUSED_STREAM,
    SETTINGS_TIMEOUT,
    STALE,
    Data,
    Headers,
    ResponseHead,
    Stream,
    StreamItem,
    StreamReset,
    Trailers,
    ensure_open,
)
from meshnode.net.violations import ConnectionRules

log = logging.getLogger(__name__)

LAST_USABLE_STREAM_ID: Final = 2**31 - 1000
GOAWAY_PING: Final = b"goaway\x00\x00"  # the opaque data of the PING that follows a GOAWAY
FLUSH_GRACE: Final = 2.0  # seconds to write the last frames once reading has ended


class H2Session:
    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        client_side: bool,
        on_request: Callable[[Stream], None] | None = None,
        rules: ConnectionRules | None = None,
        peer: str = "peer",
        received: bytes = b"",
    ) -> None:
        """``received``: bytes already read from ``transport`` (to tell the protocol)."""
        self.transport = transport
        self.client_side = client_side
        self._on_request = on_request
        self.rules = rules if rules is not None else ConnectionRules("upstream")
        self.peer = peer  # who is at the other end, for the log
        # Told of each GOAWAY the peer sends (an upstream's pool: its metrics, its limits).
        self.on_goaway: Callable[[GoAwayReceived], None] | None = None
        limits = self._limits = self.rules.limits
        self._request_checks = request_checks(limits)
        self._response_checks = response_checks()
        self.streams: dict[int, Stream] = {}
        # Headers are not validated here: requests are checked by ``check_request``, so
        # that a malformed one fails its stream rather than every stream of the connection,
        # responses and trailers in one pass each (``check_response``, ``check_trailers``);
        # what is sent was checked when it arrived, or made by meshnode itself.
        self.conn = Codec(
            client_side=client_side,
            max_concurrent_streams=limits.max_concurrent_streams,
            initial_window_size=limits.stream_window,
            max_header_list_size=limits.max_header_list_size,
            max_frame_size=limits.max_frame_size,
            # WebSocket tunnels by extended CONNECT (RFC 8441), on the serving side.
            enable_connect_protocol=not client_side,
        )
        self._high_water = limits.write_buffer
        self.started = trio.current_time()
        self._gate = FrameGate(limits, expect_preface=not client_side, now=self.started)
        self._settings_acked = False
        self.requests_seen = 0
        self._raw_out: list[bytes] = []
        self._io = TransportIO(transport, received)
        self._unsent = b""  # what a write in place left over: the writer sends it first
        self._writer_wakeup = trio.Event()
        self._drained = Pulse()  # the writer sent what was queued
        self._window_opened = Pulse()  # the peer gave window, or a stream ended
        self._queued = 0
        self._peer_settings_seen = False
        # Set once the peer's first SETTINGS arrived, or the connection ended without them.
        self.peer_settings = trio.Event()
        self.goaway_received: GoAwayReceived | None = None
        self.goaway_sent_last_id: int | None = None
        self._last_taken = 0  # the peer's last stream this side took (server side)
        self.closing = False  # no new streams; the session ends when the last one does
        self.dead = False
        self._fatal_sent = False  # the connection ended for the peer's violation
        # An upstream recycling the connection while busy: the streams its (last) GOAWAY
        # accepted, and how many were in flight then; and how many it accepted but never
        # answered.
        self.recycled_at: tuple[int, int] | None = None
        self.lost_after_goaway = 0
        # The last stream id this side opens (client side): past it, the connection is
        # retired before the upstream's own per-connection request limit (``retire_after``).
        self.last_stream_id = LAST_USABLE_STREAM_ID
        self.reads = 0  # reads from the transport: a stream that saw none was never answered
        self.last_active = self.started  # when it last had no stream: idle timeouts count from it
        self._cancel_scope = trio.CancelScope()

    # -- lifecycle ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it closes; the transport is closed on return."""
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(self._limits.connection_window - 65535)
        self._wake_writer()
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    nursery.start_soon(self._watch_loop)
                    task_status.started()
                    await self._read_loop()
                    # Let the writer flush what is queued (a GOAWAY, last replies), briefly.
                    self.closing = True
                    self._lose_all_streams()
                    self._wake_writer()
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_GRACE
        finally:
            self.peer_settings.set()
            self._lose_all_streams()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)

    def close_gracefully(self, error_code: int = NO_ERROR) -> None:
        """Send GOAWAY: streams already taken finish, any later one is refused. Its
        ``last_stream_id`` is the last stream taken, not the highest h2 has read: streams
        that came in the same read as the GOAWAY's cause are past it, and refused."""
        if self.goaway_sent_last_id is None:
            last_id = self._last_taken
            self.goaway_sent_last_id = last_id
            self._raw_out.append(goaway_frame(last_id, error_code))
        self.closing = True
        self._wake_writer()

    def abort(self) -> None:
        """End the connection now; streams in flight see a reset."""
        self.dead = True
        self._cancel_scope.cancel()

    def retire_after(self, streams: int) -> None:
        """Open at most ``streams`` streams here, then close the connection once they end."""
        self.last_stream_id = min(LAST_USABLE_STREAM_ID, 2 * streams - 1)

    @property
    def accepts_streams(self) -> bool:
        """Whether a new outbound stream may be opened here now (client side): not before
        the peer's SETTINGS say how many it takes (HTTP/2 lets a client assume no limit
        until then, and a burst past a lower one would be refused), and never past the
        limit it last set, however low."""
        return (
            self._peer_settings_seen
            and not self.dead
            and not self.closing
            and self.goaway_received is None
            and len(self.streams) < self.conn.remote_max_concurrent_streams
            and self.conn.highest_outbound_stream_id < self.last_stream_id
        )

    @property
    def settings_received(self) -> bool:
        return self._peer_settings_seen

    def open_stream(self, headers: Headers, *, end_stream: bool) -> Stream:
        """Start a request (client side); the caller checked ``accepts_streams``."""
        stream_id = self.conn.get_next_available_stream_id()
        stream = Stream(self, stream_id, None)
        stream.tunnel = WEBSOCKET in headers
        stream.born = self.reads
        self.send_stream_headers(stream, headers, end_stream)
        self.streams[stream_id] = stream  # after h2 counted the streams open before it
        return stream

    # -- reading -----------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._io.receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            self.reads += 1
            try:
                passed, goaways = self._gate.feed(data, trio.current_time())
                events = self.conn.receive_data(passed) if passed else []
            except (FrameError, ProtocolViolation) as exc:
                self._fatal(exc.error_code, exc.kind, str(exc))
                return
            for event in events:
                self._dispatch(event)
            for goaway in goaways:
                self._on_goaway(goaway)
            for stream_id, code in self.conn.take_provoked_resets():
                self._provoked_reset(stream_id, code)
            self._wake_writer()
            if self.dead or self._fatal_sent:
                return

    def _dispatch(self, event: Event) -> None:
        # In the order of how often they come: a request brings two stream ends.
        if isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.remote_closed = True
                stream._push(END_OF_STREAM)
                self._forget_if_finished(stream)
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._ack_connection(event.stream_id, event.flow_controlled_length)
            else:
                stream.owed += event.flow_controlled_length
                stream._push(Data(event.data, event.flow_controlled_length))
        elif isinstance(event, RequestReceived):
            self._on_request_received(event)
        elif isinstance(event, ResponseReceived):
            head = event.headers
            self._push_checked(event.stream_id, ResponseHead(head), self._response_checks(head))
        elif isinstance(event, WindowUpdated):
            self._window_opened.fire()
        elif isinstance(event, TrailersReceived):
            trailers = event.headers
            self._push_checked(event.stream_id, Trailers(trailers), check_trailers(trailers))
        elif isinstance(event, CodecStreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                reset = (
                    self._reset_by_peer(stream, code)
                    if event.remote_reset
                    else StreamReset(stream, code)  # the codec's, for a frame it refused
                )
                self._forget(stream, reset)
        elif isinstance(event, RemoteSettingsChanged):
            if not self._peer_settings_seen:
                self._peer_settings_seen = True
                self.peer_settings.set()
            self._window_opened.fire()
        elif isinstance(event, SettingsAcknowledged):
            self._settings_acked = True

    def _on_request_received(self, event: RequestReceived) -> None:
        limits = self._limits
        checked = self._request_checks(event.headers)
        stream = Stream(self, event.stream_id, checked if isinstance(checked, list) else None)
        stream.answers_head = _method(event.headers) == b"HEAD"
        if self._on_request is None or self.closing:
            # Opened after our GOAWAY (or on a client session): never processed. Not a
            # violation (the GOAWAY may have crossed it), but charged like one.
            self.charge_reset()
            self.reset_stream(stream, REFUSED_STREAM)
            return
        self.streams[event.stream_id] = stream
        self._last_taken = event.stream_id
        self.requests_seen += 1
        if isinstance(checked, Malformed):
            # Answered by the handler (a 400 on this stream alone), and charged like a reset.
            stream.malformed = checked
            self.violation("malformed-request", checked.reason)
            self.charge_reset()
        limit = limits.max_requests_per_connection
        if limit and self.requests_seen >= limit:
            self.close_gracefully()
        self._on_request(stream)

    def _push_checked(
        self, stream_id: int, item: ResponseHead | Trailers, problem: str | None
    ) -> None:
        """A response head or trailers, unless malformed: then the stream fails as a reset
        would (a broken upstream, or a caller's bad trailers), charged to the peer."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if problem is None:
            stream._push(item)
        else:
            kind = "malformed-response" if type(item) is ResponseHead else "malformed-trailers"
            stream.refuse(PROTOCOL_ERROR, kind, problem)

    def violation(self, kind: str, detail: str) -> None:
        """Count and log a rule the peer broke (the caller decides what it costs the peer)."""
        self.rules.violations.record(self.rules.where, kind, self.peer, detail)

    def charge_reset(self) -> None:
        """A reset (or refusal) the peer provoked; too many end the connection."""
        try:
            self._gate.budgets.spend("resets_sent", trio.current_time())
        except FrameError as exc:
            self._fatal(exc.error_code, exc.kind, str(exc))

    def _provoked_reset(self, stream_id: int, code: int) -> None:
        """A reset the codec sent for the peer's frames: a violation, charged like any other
        the peer provokes, so that a MadeYouReset flood ends in GOAWAY ENHANCE_YOUR_CALM."""
        if self._fatal_sent:
            return
        if code == REFUSED_STREAM:
            limit = self.conn.local_max_concurrent_streams
            self.violation("stream-limit", f"stream {stream_id} refused: over {limit} open")
        else:
            self.violation("stream-error", f"stream {stream_id} reset (code {code})")
        self.charge_reset()

    def stream_waiting(self, stream: Stream) -> None:
        """Nothing to do: HTTP/2 peers send without being asked."""

    def _push(self, stream_id: int, item: StreamItem) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._push(item)

    def _reset_by_peer(self, stream: Stream, code: int) -> StreamReset:
        """The peer's RST_STREAM. REFUSED_STREAM promises the stream was never processed
        (RFC 9113 8.7); an upstream's NO_ERROR before any answer is how some servers shed
        streams while they shut down (Hypercorn): the request was not failed, but may have
        been seen."""
        if code == REFUSED_STREAM:
            return StreamReset(stream, code, refused=True, lifecycle=REFUSED)
        lifecycle = REFUSED if code == NO_ERROR and self.client_side else None
        return StreamReset(stream, code, lifecycle=lifecycle)

    def _on_goaway(self, goaway: GoAwayReceived) -> None:
        """RFC 9113 6.8: streams above ``last_stream_id`` were never processed; a later
        GOAWAY with a lower one is honoured the same way."""
        if (
            goaway.error_code == NO_ERROR
            and self.streams
            and goaway.last_stream_id <= self.conn.highest_outbound_stream_id
        ):  # a GOAWAY that cuts the streams off (not a shutdown's first, naming them all)
            self.recycled_at = ((goaway.last_stream_id + 1) // 2, len(self.streams))
        self.goaway_received = goaway
        self.closing = True
        # An upstream's GOAWAY is news to its operator; a caller's ends its every connection.
        log.log(
            logging.INFO if self.client_side else logging.DEBUG,
            "%s %s sent GOAWAY (error code %d, last_stream_id %d)%s",
            "upstream" if self.client_side else "caller",
            self.peer,
            goaway.error_code,
            goaway.last_stream_id,
            f": {goaway.debug_data!r}" if goaway.debug_data else "",
        )
        if self.on_goaway is not None:
            self.on_goaway(goaway)
        if self.client_side:
            for stream in list(self.streams.values()):
                if stream.id > goaway.last_stream_id:
                    reset = StreamReset(stream, REFUSED_STREAM, refused=True, lifecycle=GOAWAY)
                    self._forget(stream, reset)
            if self.streams and goaway.error_code == NO_ERROR:
                # Is the connection still served? nginx answers; a server whose h2 closed
                # with its GOAWAY (Hypercorn) ends the connection at once, so the streams it
                # will never answer fail now rather than at its keep-alive timeout.
                self.conn.ping(GOAWAY_PING)
        self._finish_if_idle()

    def _fatal(self, error_code: int, kind: str, reason: str) -> None:
        """End the connection for a violation: GOAWAY with ``error_code``, streams lost,
        reading stops."""
        self.violation(kind, reason)
        self._fatal_sent = True
        self.goaway_sent_last_id = self.conn.highest_inbound_stream_id
        self._raw_out.append(goaway_frame(self.goaway_sent_last_id, error_code, reason.encode()))
        self.closing = True
        self._lose_all_streams()
        self._wake_writer()

    # -- writing -----------------------------------------------------------

    async def _write_loop(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = self._take_output()
                if data:
                    self._queued = 0
                    await self._io.send_all(data)
                    self._drained.fire()
                    continue
                if self.closing and not self.streams:
                    break
                await self._writer_wakeup.wait()
                self._writer_wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self.dead = True
        scope.cancel()

    def _take_output(self) -> bytes:
        data = self._unsent + self.conn.data_to_send()
        self._unsent = b""
        if self._raw_out:
            data += b"".join(self._raw_out)
            self._raw_out.clear()
        return data

    def _send_queued(self, stream: Stream, *, ending: bool) -> None:
        """Send what ``stream`` just queued. Its last frames, when it is alone on an idle
        plain TCP connection, are written here and now: at one request at a time, waking
        the writer instead added a scheduler round (and an epoll wait) to the latency each
        way. Anything else is the writer's, which sends a run of frames (a body's before its
        last, other streams') in one write; what the socket does not take now is left to the
        writer too, ahead of anything queued later."""
        if (
            not ending
            or not self._io.can_send_now
            or self._unsent
            or self.dead
            or len(self.streams) > (stream.id in self.streams)  # other streams in flight
        ):
            self._wake_writer()
            return
        data = self._take_output()
        sent = self._io.send_now(data) if data else 0
        if sent < len(data):
            self._unsent = data[sent:]
            self._wake_writer()
        elif data:
            self._queued = 0
            self._drained.fire()

    async def _wait_for(self, stream: Stream, pulse: Pulse) -> None:
        """Wait on the peer (window, or the socket draining), on the stream's idle clock."""
        stream.waiting_since = trio.current_time()
        try:
            await pulse.wait()
        finally:
            stream.waiting_since = None

    # -- timeouts ----------------------------------------------------------

    async def _watch_loop(self) -> None:
        """Enforce the connection's timeouts, waking at the next deadline.

        A deadline that starts after a wake is seen within half of the shortest
        timeout; streams are scanned on each wake, at most ``max_concurrent_streams``.
        """
        limits = self._limits
        timeouts = (
            limits.header_timeout,
            limits.settings_timeout,
            limits.stream_idle_timeout,
            limits.first_request_timeout,
            limits.idle_timeout,
        )
        interval = min(timeouts) / 2
        while not self.dead:
            now = trio.current_time()
            next_check = self._check_deadlines(now)
            await trio.sleep_until(min(next_check, now + interval))

    def _check_deadlines(self, now: float) -> float:
        """Act on every deadline that has passed; return when the next one falls."""
        limits = self._limits
        deadlines = [math.inf]
        if not self._settings_acked:
            due = self.started + limits.settings_timeout
            if now >= due:
                self._fatal(SETTINGS_TIMEOUT, "settings-timeout", "SETTINGS never acknowledged")
                return math.inf
            deadlines.append(due)
        stalled = self._gate.stalled_since
        if stalled is not None:
            due = stalled + limits.header_timeout
            if now >= due:
                self._fatal(
                    ENHANCE_YOUR_CALM,
                    "header-timeout",
                    f"a frame or header block incomplete for {limits.header_timeout:g}s",
                )
                return math.inf
            deadlines.append(due)
        if not self.streams and not self.closing:
            used = self.requests_seen or self.client_side
            quiet = limits.idle_timeout if used else limits.first_request_timeout
            due = self.last_active + quiet
            if now >= due:
                self.close_gracefully()
            deadlines.append(due)
        for stream in list(self.streams.values()):
            since = stream.waiting_since
            if since is None or stream.tunnel:
                continue
            due = since + limits.stream_idle_timeout
            if now >= due:
                waited = f"stream {stream.id} waited {now - since:.1f}s"
                stream.refuse(CANCEL, "stream-idle", waited)
            else:
                deadlines.append(due)
        return min(deadlines)

    def _wake_writer(self) -> None:
        """Wake the writer if it has work: bytes to send, or a closing session to end.
        Most received frames (a request's headers, a response) queue no reply: waking the
        writer for nothing cost a scheduler round per read."""
        if self._unsent or self._raw_out or self.conn.has_output or self.closing:
            self._writer_wakeup.set()

    def send_stream_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        self._check_open(stream)
        try:
            self.conn.send_headers(stream.id, headers, end_stream=end_stream)
        except StreamUnusable as exc:
            self._forget(stream, StreamReset(stream, CANCEL))
            raise stream.error from exc  # type: ignore[misc]
        if not stream.headers_sent and headers and headers[0][0] == b":status":
            stream.status_sent = int(headers[0][1])
        stream.headers_sent = True
        if end_stream:
            stream.local_closed = True
            self._forget_if_finished(stream)
        self._send_queued(stream, ending=end_stream)

    async def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if stream.answers_head and data:
            # The node's own answers (an error, a fallback) carry a body for any method,
            # and an upstream may send one anyway: a strict caller treats it as a
            # protocol error. Only its end goes out.
            if not end_stream:
                return
            data = b""
        conn = self.conn
        offset = 0
        remaining = len(data)
        while True:
            self._check_open(stream)
            try:
                window = conn.local_flow_control_window(stream.id)
            except StreamUnusable as exc:
                self._forget(stream, StreamReset(stream, CANCEL))
                raise stream.error from exc  # type: ignore[misc]
            size = min(window, conn.max_outbound_frame_size, remaining)
            if size < 0 or size == 0 < remaining:
                # No room; or a window the peer's SETTINGS took below zero, where even an
                # empty frame ending the body must wait (RFC 9113 6.9.2).
                await self._wait_for(stream, self._window_opened)
                continue
            last = end_stream and size == remaining
            try:
                conn.send_data(stream.id, data[offset : offset + size], end_stream=last)
            except StreamUnusable as exc:
                self._forget(stream, StreamReset(stream, CANCEL))
                raise stream.error from exc  # type: ignore[misc]
            offset += size
            remaining -= size
            self._queued += size
            self._gate.budgets.earn("window_update", WINDOW_UPDATES_PER_DATA_FRAME)
            self._send_queued(stream, ending=last)
            if self._queued > self._high_water:
                await self._wait_for(stream, self._drained)
            if remaining == 0:
                break
        if end_stream:
            stream.local_closed = True
            self._forget_if_finished(stream)

    def _check_open(self, stream: Stream) -> None:
        ensure_open(stream, connection_dead=self.dead)

    def reset_stream(self, stream: Stream, code: int) -> None:
        if stream.finished or self.dead:
            return
        self.conn.reset_stream(stream.id, code)
        self._forget(stream, StreamReset(stream, code))
        self._wake_writer()

    def ack_stream(self, stream: Stream, flow_length: int) -> None:
        if flow_length and self.streams.get(stream.id) is stream:
            stream.owed -= flow_length
            self._ack_connection(stream.id, flow_length)
            self._wake_writer()

    def _ack_connection(self, stream_id: int, flow_length: int) -> None:
        self.conn.acknowledge_received_data(flow_length, stream_id)

    # -- bookkeeping -------------------------------------------------------

    def _forget_if_finished(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._forget(stream, None)

    def _forget(self, stream: Stream, error: StreamReset | None) -> None:
        if error is not None:
            stream._fail(error)
        if self.streams.pop(stream.id, None) is not None:
            if stream.owed:
                # Nobody will pass on what is still queued (or held) for this stream: hand
                # its share of the connection window back now, or it would leak for good.
                self._ack_connection(stream.id, stream.owed)
                stream.owed = 0
                self._wake_writer()
            if not self.streams:  # idle from now: the idle timeouts count only then
                self.last_active = trio.current_time()
                if self.client_side and self.conn.highest_outbound_stream_id >= self.last_stream_id:
                    self.close_gracefully()  # retired, and now done
            self._window_opened.fire()  # wake its senders so they see the reset
            self._finish_if_idle()

    def _finish_if_idle(self) -> None:
        if self.closing and not self.streams:
            self._wake_writer()

    def _lose_all_streams(self) -> None:
        self.dead = True
        for stream in list(self.streams.values()):
            lifecycle = self._lost_in_lifecycle(stream)
            if lifecycle == GOAWAY:
                self.lost_after_goaway += 1
            reset = StreamReset(stream, CANCEL, connection_lost=True, lifecycle=lifecycle)
            self._forget(stream, reset)
        self._window_opened.fire()
        self._drained.fire()

    def _lost_in_lifecycle(self, stream: Stream) -> str | None:
        """Whether an upstream closing the connection under ``stream`` was recycling it: it
        had sent GOAWAY, or the stream went out on a reused connection and nothing came
        back at all (the upstream closed it as idle while the request was on its way)."""
        if not self.client_side or self._fatal_sent:
            return None
        if self.goaway_received is not None:
            return GOAWAY
        if stream.id > 1 and stream.born == self.reads:
            return STALE
        return None


def _method(headers: Headers) -> bytes | None:
    """The request's ``:method``, also of a malformed request (usually its first field)."""
    for name, value in headers:
        if name == b":method":
            return value
    return None
