"""One request's two ends inside one process, as a pair of ``Stream`` objects.

The embedded mesh client hands the request path (``Proxy.handle``) the
``server`` end, exactly as a listener hands it a stream that arrived over
HTTP/2, and keeps the ``client`` end: it sends the request body there and
receives the response head, data and trailers from it. Everything the request
path does for a network caller (validation, routing, protections, retries,
resets) therefore happens unchanged, with no bytes encoded on the way.

The rules of an HTTP/2 stream hold: a sender waits while ``window`` bytes it
sent are not yet acknowledged by the other end (so a caller that stops
reading stops the upstream, as flow control would), items received before a
reset are still delivered, and a reset of either end fails the other, which
cancels the request's work (and the upstream stream) at once.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from meshnode.net.h2.validation import Malformed, check_request_within
from meshnode.net.pulse import Pulse
from meshnode.net.stream import (
    CANCEL,
    END_OF_STREAM,
    Data,
    Headers,
    ResponseHead,
    Stream,
    StreamReset,
    Trailers,
)
from meshnode.policy.models import Limits

log = logging.getLogger(__name__)

WINDOW: Final = 256 * 1024  # bytes in flight each way, as an HTTP/2 stream window
LOCAL_STREAM_ID: Final = 1
DEFAULT_LIMITS: Final = Limits()  # frozen: one serves every exchange given none


class LocalExchange:
    """A request whose caller is in this process: ``client`` and ``server`` ends."""

    def __init__(
        self,
        headers: Headers,
        *,
        end_stream: bool,
        limits: Limits | None = None,
        window: int = WINDOW,
    ) -> None:
        """``headers`` are checked as a listener checks a request from the network: if they
        are malformed, the request path answers 400 without forwarding anything."""
        limits = limits if limits is not None else DEFAULT_LIMITS
        checked = check_request_within(headers, limits)
        self.client = Stream(self, LOCAL_STREAM_ID, None)
        self.server = Stream(
            self, LOCAL_STREAM_ID, checked if isinstance(checked, list) else headers
        )
        if isinstance(checked, Malformed):
            self.server.malformed = checked
        self.client.headers_sent = True
        self._window = window
        self._window_opened = Pulse()
        # Set by whoever serves the request once done with it (its figures recorded): the
        # answer reaches the caller a moment before that.
        self.served = trio.Event()
        if end_stream:
            self._end(self.client)

    def _other(self, stream: Stream) -> Stream:
        return self.server if stream is self.client else self.client

    def send_stream_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        _check_open(stream)
        if stream is self.server and not stream.headers_sent:
            if headers and headers[0][0] == b":status":
                stream.status_sent = int(headers[0][1])
            item: ResponseHead | Trailers = ResponseHead(headers)
        else:
            item = Trailers(headers)  # the request's headers were given at the start
        stream.headers_sent = True
        self._other(stream)._push(item)
        if end_stream:
            self._end(stream)

    async def send_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        receiver = self._other(stream)
        while True:
            _check_open(stream)
            if not data or receiver.owed < self._window:
                break
            stream.waiting_since = trio.current_time()
            try:
                await self._window_opened.wait()
            finally:
                stream.waiting_since = None
        if data:
            receiver.owed += len(data)
            receiver._push(Data(data, len(data)))
        if end_stream:
            self._end(stream)

    def _end(self, stream: Stream) -> None:
        stream.local_closed = True
        receiver = self._other(stream)
        receiver.remote_closed = True
        receiver._push(END_OF_STREAM)

    def ack_stream(self, stream: Stream, flow_length: int) -> None:
        if flow_length:
            stream.owed -= flow_length
            self._pulse()

    def reset_stream(self, stream: Stream, code: int) -> None:
        if stream.finished:
            return
        stream._fail(StreamReset(stream, code))
        other = self._other(stream)
        if not other.finished:
            other._fail(StreamReset(other, code))
        self._pulse()

    def violation(self, kind: str, detail: str) -> None:
        """The caller broke a rule of ``[limits]`` (a body over ``max_request_body``)."""
        log.warning("an in-process request was refused (%s): %s", kind, detail)

    def charge_reset(self) -> None:
        """Resets are budgeted against hostile peers; this process is not one."""

    def stream_waiting(self, stream: Stream) -> None:
        """Nothing to do: the other end sends without being asked."""

    def _pulse(self) -> None:
        self._window_opened.fire()


def _check_open(stream: Stream) -> None:
    if stream.error is not None:
        raise stream.error
    if stream.local_closed:
        raise StreamReset(stream, CANCEL)
