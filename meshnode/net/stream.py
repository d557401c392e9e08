"""The house's stream vocabulary: one request's exchange as the request path sees it,
whichever connection carries it.

A ``Stream`` is read item by item (``ResponseHead``, ``Data``, ``Trailers``,
``END_OF_STREAM``) and written through its carrier: an HTTP/2 session
(``net/h2/session.py``), an HTTP/1.1 connection (``net/http1/server.py``,
``net/http1/client.py``) or the two ends of an in-process exchange (``net/local.py``).
Each implements ``StreamCarrier``. A stream that can no longer carry data raises
``StreamReset``, whose ``lifecycle`` says when the upstream recycled its connection
rather than failed the request.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

import attrs
import trio

from meshnode.net.h2.validation import WEBSOCKET, Malformed

Headers = list[tuple[bytes, bytes]]

# Error codes (RFC 9113 7): what a reset says, whichever protocol carries the stream.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
SETTINGS_TIMEOUT: Final = 0x4
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8


@attrs.frozen(slots=True)
class ResponseHead:
    headers: Headers

    @property
    def status(self) -> int:
        """The :status, or 0 if it is missing or not a number."""
        for name, value in self.headers:
            if name == b":status":
                return int(value) if value.isdigit() else 0
        return 0


@attrs.frozen(slots=True)
class Data:
    data: bytes
    flow_length: int  # what to ``ack`` once the data has been passed on (padding included)


@attrs.frozen(slots=True)
class Trailers:
    headers: Headers


@attrs.frozen(slots=True)
class EndOfStream:
    """The peer finished sending (one instance: ``END_OF_STREAM``)."""


END_OF_STREAM: Final = EndOfStream()
StreamItem = ResponseHead | Data | Trailers | EndOfStream


# Why an upstream left a stream unanswered as it recycled its connection (RFC 9113 6.8, 8.7):
# the labels of ``meshnode_requests_resent_total``.
GOAWAY: Final = "goaway"  # above the GOAWAY's last_stream_id, or lost after the GOAWAY
REFUSED: Final = "refused-stream"  # RST_STREAM REFUSED_STREAM (or NO_ERROR before any answer)
STALE: Final = "stale-connection"  # a reused connection closed before anything came back


class StreamReset(Exception):
    """The stream can no longer carry data: the peer reset it, or its connection went away.

    ``lifecycle`` names the connection event behind it when the upstream was recycling the
    connection rather than failing the request; ``refused`` says the upstream never
    processed the stream (any request may be sent again), where without it only a request
    that is safe to repeat may be.
    """

    def __init__(
        self,
        stream: Stream,
        code: int,
        *,
        refused: bool = False,
        connection_lost: bool = False,
        lifecycle: str | None = None,
    ) -> None:
        super().__init__(f"stream {stream.id} reset (code {code})")
        self.stream = stream
        self.code = code
        self.refused = refused
        self.connection_lost = connection_lost
        self.lifecycle = lifecycle


class StreamCarrier(Protocol):
    """What carries a ``Stream``'s frames: an HTTP/2 session, an HTTP/1.1 connection, or
    the two ends of an in-process exchange. A ``Stream`` calls these; the request path
    calls the stream."""

    def ack_stream(self, stream: Stream, flow_length: int) -> None: ...

    def send_stream_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None: ...

    async def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None: ...

    def reset_stream(self, stream: Stream, code: int) -> None: ...

    def violation(self, kind: str, detail: str) -> None: ...

    def charge_reset(self) -> None: ...

    def stream_waiting(self, stream: Stream) -> None:
        """The consumer waits for what the peer sends next (HTTP/1.1: time for a 100)."""


class Stream:
    """One HTTP/2 stream: items received in order, and sends that respect flow control."""

    __slots__ = (
        "_items",
        "_waiter",
        "answers_head",
        "born",
        "cancel_scope",
        "error",
        "headers",
        "headers_sent",
        "id",
        "local_closed",
        "malformed",
        "owed",
        "remote_closed",
        "session",
        "status_sent",
        "tunnel",
        "waiting_since",
    )

    def __init__(self, session: StreamCarrier, stream_id: int, headers: Headers | None) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers  # request headers on a server session
        self._items: deque[StreamItem] = deque()
        self._waiter: trio.lowlevel.Task | None = None  # the task parked in ``receive``
        self.remote_closed = False
        self.local_closed = False
        self.headers_sent = False
        self.status_sent = 0  # the :status of the response head this side sent, if any
        self.error: StreamReset | None = None
        # Cancelled when the stream is reset, so the work serving it stops at once.
        self.cancel_scope: trio.CancelScope | None = None
        # Why the request must be refused instead of served (server side), if it must.
        self.malformed: Malformed | None = None
        # Since when the stream has been waiting on the peer (data, window, or a drain).
        self.waiting_since: float | None = None
        self.owed = 0  # flow-controlled bytes received and not yet acknowledged
        # A HEAD request's (server side): its answer has no content (RFC 9110 9.3.2).
        self.answers_head = False
        self.born = 0  # the connection's reads when the stream was opened (client side)
        # A WebSocket tunnel: waiting on one side is its normal state; the request path
        # holds it to ``tunnel_idle`` (no byte either way) instead of ``stream_idle_timeout``.
        self.tunnel = headers is not None and WEBSOCKET in headers

    async def receive(self) -> StreamItem:
        """The next item; items that arrived before a reset are still delivered first."""
        while not self._items:
            if self.error is not None:
                raise self.error
            # Parked directly (one consumer at a time), not on an Event: a wait per item
            # on the request path, made cheap.
            self._waiter = trio.lowlevel.current_task()
            self.waiting_since = trio.current_time()
            self.session.stream_waiting(self)
            try:
                await trio.lowlevel.wait_task_rescheduled(self._abandon_wait)
            finally:
                self.waiting_since = None
        return self._items.popleft()

    def _abandon_wait(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def read_rest(self, keep: int) -> tuple[bytes, Headers | None]:
        """Read the body to its end, handing window back as it goes: the first ``keep``
        bytes of it, and the trailers if there were any."""
        body = bytearray()
        while True:
            item = await self.receive()
            if isinstance(item, Data):
                if len(body) < keep:
                    body += item.data[: keep - len(body)]
                self.ack(item.flow_length)
            elif isinstance(item, Trailers):
                return bytes(body), item.headers
            elif isinstance(item, EndOfStream):
                return bytes(body), None

    def consume_end(self) -> bool:
        """If the peer finished with nothing left to read, take the end marker and say so.

        Lets a GET go upstream as one HEADERS frame with END_STREAM, and a
        header-only response go back the same way.
        """
        if self.remote_closed and len(self._items) == 1 and self._items[0] is END_OF_STREAM:
            self._items.clear()
            return True
        return False

    def ack(self, flow_length: int) -> None:
        """Hand ``flow_length`` bytes of window back to the peer: the data was passed on."""
        self.session.ack_stream(self, flow_length)

    async def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        self.session.send_stream_headers(self, headers, end_stream)

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        await self.session.send_stream_data(self, data, end_stream)

    async def end(self) -> None:
        await self.session.send_stream_data(self, b"", True)

    def reset(self, code: int = CANCEL) -> None:
        """Abandon the stream (a no-op once it is closed both ways or already reset: the
        request path's last word on every stream, most of them finished)."""
        if self.error is None and not (self.local_closed and self.remote_closed):
            self.session.reset_stream(self, code)

    def refuse(self, code: int, kind: str, detail: str) -> None:
        """Reset the stream because the peer broke a rule: counted, logged, and charged to
        the peer's budget of provoked resets (MadeYouReset)."""
        self.session.violation(kind, detail)
        self.session.charge_reset()
        self.session.reset_stream(self, code)

    @property
    def finished(self) -> bool:
        return self.error is not None or (self.local_closed and self.remote_closed)

    def _push(self, item: StreamItem) -> None:
        self._items.append(item)
        self._wake()

    def _fail(self, error: StreamReset) -> None:
        if self.error is None:
            self.error = error
            self._wake()
            if self.cancel_scope is not None:
                self.cancel_scope.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)


def ensure_open(stream: Stream, *, connection_dead: bool) -> None:
    """Raise the stream's reset if it has one (or gets one now: its connection is gone)."""
    if stream.error is not None:
        raise stream.error
    if connection_dead:
        stream._fail(StreamReset(stream, CANCEL, connection_lost=True))
        raise stream.error  # type: ignore[misc]
