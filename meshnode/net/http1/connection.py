"""What both ends of an HTTP/1.1 connection share: one writer task that flushes what h11
produced, senders that wait once ``write_buffer`` bytes are queued, and the window rule
(received body data counts against ``stream_window`` until the consumer acknowledges it).

On plain TCP the socket is read in place, and a message's end (with whatever of it is
still queued) is written by the task that ends it when the writer is idle
(``net/socket_io.py``): at one request at a time, a scheduler round less each way."""

from __future__ import annotations

import logging

import h11
import trio

from meshnode.net.pulse import Pulse
from meshnode.net.socket_io import RECEIVE_SIZE, TransportIO
from meshnode.net.stream import CANCEL, Stream, StreamReset, ensure_open
from meshnode.net.violations import ConnectionRules

log = logging.getLogger(__name__)

FLUSH_GRACE = 2.0  # seconds to write the last bytes once the connection is ending


class H1Connection:
    def __init__(
        self,
        transport: trio.abc.Stream,
        role: type[h11.CLIENT] | type[h11.SERVER],
        rules: ConnectionRules,
        peer: str,
        received: bytes = b"",
    ) -> None:
        """``received``: bytes already read from ``transport`` (to tell the protocol)."""
        self.transport = transport
        self._io = TransportIO(transport, received)
        self.rules = rules
        self.peer = peer
        self._limits = rules.limits
        self.conn = h11.Connection(
            role, max_incomplete_event_size=self._limits.max_header_list_size
        )
        self.dead = False
        self._cancel_scope = trio.CancelScope()  # the connection's: cancelled, it ends
        self.streams: dict[int, Stream] = {}  # the exchange in flight, if any
        self._chunked = False  # this side's message in flight is chunked (it may have trailers)
        # This side's message may carry no body (an answer to HEAD, a 204 or 304): h11 refuses
        # any, and a refusal leaves the connection unusable, so whatever comes is dropped.
        self._bodiless = False
        self._eof_pending = False  # a tunnel's side has ended: half-close once all is sent
        self._out = bytearray()
        self._writer_wakeup = trio.Event()
        self._drained = Pulse()  # the writer sent what was queued
        self._progress = Pulse()  # bytes went out, or window was handed back

    # -- the StreamCarrier methods both sides implement alike --------------

    def ack_stream(self, stream: Stream, flow_length: int) -> None:
        if flow_length:
            stream.owed -= flow_length
            self._pulse()

    def violation(self, kind: str, detail: str) -> None:
        self.rules.violations.record(self.rules.where, kind, self.peer, detail)

    async def _send_body(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """Queue body bytes (and the end), then wait while too much is queued."""
        self._check_open(stream)
        if data and not self._bodiless:
            self._write(h11.Data(data=data))
        if end_stream:
            self._end_message(stream, None)
        while len(self._out) > self._limits.write_buffer and not self.dead:
            await self._wait(stream, self._drained)
        self._check_open(stream)

    async def _send_raw(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """A tunnel's bytes, as they are (h11 is out of the way once protocols switched)."""
        self._check_open(stream)
        if data:
            self._out += data
            self._writer_wakeup.set()
        if end_stream:
            stream.local_closed = True
            self._eof_pending = True  # the peer learns it as TCP's half-close, once flushed
            self._writer_wakeup.set()
            self._pulse()  # whoever waits for this side's end
        while len(self._out) > self._limits.write_buffer and not self.dead:
            await self._wait(stream, self._drained)
        self._check_open(stream)

    def _end_message(self, stream: Stream, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """End this side's message; trailers go only on a chunked body (else dropped: h11
        would refuse them, and a refusal leaves its connection unusable)."""
        self._write(h11.EndOfMessage(headers=trailers if trailers and self._chunked else []))
        stream.local_closed = True

    # -- reading -----------------------------------------------------------

    async def _receive(self) -> bytes:
        """The next bytes from the peer; b"" once it closed (or the connection broke)."""
        try:
            return await self._io.receive(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    async def _wait_for_window(self, stream: Stream) -> None:
        """Read no more body while ``stream_window`` bytes wait to be passed on."""
        while stream.owed >= self._limits.stream_window and not stream.finished:
            await self._wait(stream, None)

    # -- writing -----------------------------------------------------------

    def _write(self, event: h11.Event) -> None:
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as exc:
            # h11 refused what it was given (a combination nothing else caught): h11 cannot
            # go on with this connection, so it ends here and its exchange fails as a reset.
            log.warning("HTTP/1.1 connection with %s ended: %s", self.peer, exc)
            lost = list(self.streams.values())
            self.dead = True
            self._connection_lost()
            self._cancel_scope.cancel()
            if lost and lost[0].error is not None:
                raise lost[0].error from exc
            return
        if data:
            self._out += data
        # The end often has no bytes of its own (a sized body), yet ends what is queued.
        self._send_queued(ending=type(event) is h11.EndOfMessage)

    def _send_queued(self, *, ending: bool) -> None:
        """Send what is queued: at a message's end, here and now if the writer is idle on
        plain TCP; else (and what the socket does not take now) by the writer."""
        if not self._out:
            return
        if not ending or not self._io.can_send_now or self._eof_pending or self.dead:
            self._writer_wakeup.set()
            return
        del self._out[: self._io.send_now(self._out)]
        if self._out:
            self._writer_wakeup.set()
            return
        self._pulse()
        self._drained.fire()

    async def _write_loop(self) -> None:
        try:
            while True:
                if self._out:
                    chunk = bytes(self._out)
                    self._out.clear()
                    await self._io.send_all(chunk)
                    self._pulse()
                    continue
                if self._eof_pending:
                    self._eof_pending = False
                    if isinstance(self.transport, trio.abc.HalfCloseableStream):
                        await self.transport.send_eof()
                self._drained.fire()
                await self._writer_wakeup.wait()
                self._writer_wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.dead = True
            self._connection_lost()
            self._drained.fire()

    async def _flush(self) -> None:
        with trio.move_on_after(FLUSH_GRACE):
            while self._out and not self.dead:
                await self._drained.wait()

    # -- bookkeeping -------------------------------------------------------

    def _connection_lost(self) -> None:
        """The connection is gone: the stream in flight fails, as on a lost HTTP/2 connection."""
        for stream in list(self.streams.values()):
            stream._fail(self._lost(stream))
        self.streams.clear()
        self._pulse()

    def _lost(self, stream: Stream) -> StreamReset:
        """The reset of a stream whose connection went away."""
        return StreamReset(stream, CANCEL, connection_lost=True)

    def _check_open(self, stream: Stream) -> None:
        ensure_open(stream, connection_dead=self.dead)

    async def _wait(self, stream: Stream, pulse: Pulse | None) -> None:
        """Wait for ``pulse`` (or any progress), on the stream's idle clock."""
        stream.waiting_since = trio.current_time()
        try:
            await (pulse if pulse is not None else self._progress).wait()
        finally:
            stream.waiting_since = None

    def _pulse(self) -> None:
        self._progress.fire()
