"""Theory of operation: meshnode's own HTTP/2 codec (RFC 9113), sans I/O, either side.

The session (``session.py``) feeds it the bytes the frame gate passed (whole frames
only, the client preface first on a server) and takes back events and bytes to send.
It keeps what RFC 9113 asks a connection to keep and nothing else: each open stream's
state (who may still send), both flow-control windows each way, the settings of both
ends, the header block being received, and which streams this side reset lately.

It replaces the h2 library on the forwarding path, where h2's general machinery cost
as much as the rest of a proxied request: two state machines stepped by table lookups
several times a frame, an object per frame and per event, a window manager object per
stream. Here a frame is read off the bytes, its stream looked up once, and its event is
a small slotted object. h2 stays as the reference: the differential tests
(tests/net/test_codec.py) play the same conversations through both and compare what
each side sees and sends, and the fuzz target runs this codec under the session.

The rules, and what breaking each costs the peer (RFC 9113 5.4):

* Connection errors end the connection: ``ProtocolViolation`` carries the GOAWAY's
  error code and a metric label, and the session writes the GOAWAY. A frame on an idle
  stream, on stream 0 where it needs a stream (or the reverse), a bad frame length, a
  bad setting, a window past 2^31-1 or below zero, HPACK that does not decode
  (COMPRESSION_ERROR; an oversized header list is ENHANCE_YOUR_CALM, as h2 has it), a
  header block interrupted, PUSH_PROMISE (push is never enabled), a wrong preface.
* Stream errors reset one stream with RST_STREAM and are "provoked" (the session
  charges them to the peer's reset budget, MadeYouReset): DATA or HEADERS on a stream
  the peer has ended or that is closed (STREAM_CLOSED), a stream over our concurrency
  limit (REFUSED_STREAM; its header block is still decoded, to keep HPACK in step), a
  body longer or shorter than its content-length, trailers without END_STREAM, a
  stream depending on itself, a window update of zero or past 2^31-1 on a stream.
* Cookie crumbs are joined into one field as they arrive (RFC 9113 8.2.3), as h2 did.
* Frames on a stream this side reset are ignored (RFC 9113 5.1: they may have crossed
  the RST_STREAM), their DATA credited back to the connection window. Unknown frame
  types and PRIORITY are ignored. GOAWAY never reaches the codec (the gate takes it).

Flow control: received DATA counts against both windows at once, and window is handed
back only when the session acknowledges bytes it passed on, in WINDOW_UPDATEs sized
as h2's window manager sizes them (half a window processed, or a quarter of an empty
one), so the peer sees the same updates as before. SETTINGS this side sends apply to
what the peer sends only once acknowledged, except the limits the session enforces
from the start (frame size at the gate, header list size in the decoder).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Final

from hpack import NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError, OversizedHeaderListError

from meshnode.net.h2.framing import (
    CLIENT_PREFACE,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FRAME_HEADER_SIZE,
    FRAME_SIZE_ERROR,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame_bytes,
)
from meshnode.net.h2.hpack_decoder import HeaderDecoder
from meshnode.net.h2.hpack_encoder import StaticTableEncoder
from meshnode.net.stream import Headers

ACK: Final = 0x1
PRIORITY_FLAG: Final = 0x20
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
REFUSED_STREAM: Final = 0x7
COMPRESSION_ERROR: Final = 0x9

HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
LARGEST_WINDOW: Final = 2**31 - 1
LARGEST_FRAME_SIZE: Final = 2**24 - 1
STREAM_ID_MASK: Final = 0x7FFFFFFF
RESETS_KEPT: Final = 1024  # streams this side reset, remembered for frames crossing the reset
_BODILESS_STATUSES: Final = frozenset({b"204", b"304"})  # RFC 9110 6.4.1
INVALID_LENGTH: Final = -1


class ProtocolViolation(Exception):
    """A connection error: the GOAWAY's ``error_code``, and ``kind`` for metrics and logs."""

    def __init__(self, error_code: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.kind = kind


class StreamUnusable(Exception):
    """A send on a stream that is closed for sending (ended, reset, never opened)."""


# -- events ----------------------------------------------------------------


class HeadersEvent:
    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


class RequestReceived(HeadersEvent):
    __slots__ = ()


class ResponseReceived(HeadersEvent):
    __slots__ = ()


class TrailersReceived(HeadersEvent):
    __slots__ = ()


class DataReceived:
    __slots__ = ("data", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length


class StreamEnded:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    """The peer's RST_STREAM (``remote_reset``), or a stream error this codec answered."""

    __slots__ = ("error_code", "remote_reset", "stream_id")

    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote_reset


class WindowUpdated:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RemoteSettingsChanged:
    __slots__ = ()


class SettingsAcknowledged:
    __slots__ = ()


Event = (
    RequestReceived
    | ResponseReceived
    | TrailersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | RemoteSettingsChanged
    | SettingsAcknowledged
)

_REMOTE_SETTINGS_CHANGED: Final = RemoteSettingsChanged()
_SETTINGS_ACKNOWLEDGED: Final = SettingsAcknowledged()


# -- the connection ------------------------------------------------------------


class InboundWindow:
    """How much the peer may still send, and when to hand window back: h2's algorithm
    (``h2.windows.WindowManager``), so the peer sees the WINDOW_UPDATEs it saw from h2."""

    __slots__ = ("largest", "processed", "size")

    def __init__(self, size: int) -> None:
        self.size = self.largest = size
        self.processed = 0

    def consume(self, length: int) -> bool:
        """Whether ``length`` more bytes fit in the window (they are counted either way)."""
        self.size -= length
        return self.size >= 0

    def opened(self, increment: int) -> None:
        self.size += increment
        self.largest = max(self.size, self.largest)

    def process(self, length: int) -> int:
        """The window to hand back now that ``length`` bytes were passed on (0: not yet)."""
        processed = self.processed = self.processed + length
        if not (
            (self.size == 0 and processed > min(1024, self.largest // 4))
            or processed >= self.largest // 2
        ):
            return 0
        increment = min(processed, self.largest - self.size)
        self.processed = 0
        self.size += increment
        return increment


class StreamState:
    """One stream the codec still tracks (it forgets a stream once both ends are done)."""

    __slots__ = (
        "bodiless",
        "expected_length",
        "headers_received",
        "headers_sent",
        "inbound",
        "outbound_window",
        "received_length",
        "receiving",
        "sending",
        "stream_id",
    )

    def __init__(self, stream_id: int, outbound_window: int, inbound_window: int) -> None:
        self.stream_id = stream_id
        self.sending = True  # this side has not ended it
        self.receiving = True  # the peer has not ended it
        self.headers_sent = False  # a final head went out (what follows are trailers)
        self.headers_received = False  # a final head came in
        self.outbound_window = outbound_window
        self.inbound = InboundWindow(inbound_window)
        self.expected_length: int | None = None  # the peer's content-length
        self.received_length = 0
        self.bodiless = False  # a HEAD request: its response has no body, whatever its length


class Codec:
    """One HTTP/2 connection's protocol state; ``receive_data`` takes the bytes the frame
    gate passed and returns events, and ``data_to_send`` what to write."""

    def __init__(
        self,
        *,
        client_side: bool,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_header_list_size: int,
        max_frame_size: int,
        enable_connect_protocol: bool,
    ) -> None:
        self.client_side = client_side
        self.encoder = StaticTableEncoder()
        self.decoder = HeaderDecoder()
        # Held from the start, not from the acknowledgement: the gate and the decoder are
        # the session's limits (h2 applied them only on the peer's ACK).
        self.decoder.max_header_list_size = max_header_list_size
        self._settings_sent = {
            MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            INITIAL_WINDOW_SIZE: initial_window_size,
            MAX_HEADER_LIST_SIZE: max_header_list_size,
            MAX_FRAME_SIZE: max_frame_size,
            ENABLE_PUSH: 0,
            ENABLE_CONNECT_PROTOCOL: int(enable_connect_protocol),
        }
        self._settings_unacked: list[dict[int, int]] = []
        self.local_max_concurrent_streams = max_concurrent_streams
        self._local_initial_window = DEFAULT_WINDOW  # until the peer acknowledges ours
        self.remote_max_concurrent_streams = 2**32 - 1  # RFC 9113 6.5.2: no limit at first
        self._remote_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.outbound_window = DEFAULT_WINDOW
        self._inbound = InboundWindow(DEFAULT_WINDOW)
        self.streams: dict[int, StreamState] = {}
        self._open_inbound = 0  # streams the peer opened that are still open
        self.highest_inbound_stream_id = 0
        self.highest_outbound_stream_id = 0
        self._reset_here: dict[int, None] = {}  # lately reset by this side, oldest first
        self._provoked: list[tuple[int, int]] = []
        self._out: list[bytes] = []
        self._preface_left = 0 if client_side else len(CLIENT_PREFACE)
        self._preface_seen = b""
        # The header block being received: (stream id, fragments, END_STREAM), until its
        # END_HEADERS; any other frame before that is a connection error.
        self._block: tuple[int, list[bytes], bool] | None = None

    # -- sending -----------------------------------------------------------

    def initiate_connection(self) -> None:
        """The connection preface (a client's magic) and this side's SETTINGS."""
        if self.client_side:
            self._out.append(CLIENT_PREFACE)
        self._settings_unacked.append(self._settings_sent)
        self._frame(SETTINGS, 0, 0, _settings_payload(self._settings_sent))

    def increment_flow_control_window(self, increment: int) -> None:
        """Let the peer send ``increment`` more bytes on the connection."""
        self._inbound.opened(increment)
        self._window_update(0, increment)

    def ping(self, opaque: bytes) -> None:
        self._frame(PING, 0, 0, opaque)

    def get_next_available_stream_id(self) -> int:
        return self.highest_outbound_stream_id + 2 if self.highest_outbound_stream_id else 1

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def take_provoked_resets(self) -> list[tuple[int, int]]:
        """(stream id, error code) of each stream error the peer's frames caused since the
        last call: the session charges them to the peer's reset budget."""
        provoked = self._provoked
        if provoked:
            self._provoked = []
        return provoked

    def send_headers(self, stream_id: int, headers: Headers, *, end_stream: bool) -> None:
        """A head or trailers; a client's first on a new stream opens it."""
        stream = self.streams.get(stream_id)
        if stream is None:
            if not self.client_side or stream_id <= self.highest_outbound_stream_id:
                raise StreamUnusable(f"stream {stream_id} is closed")
            stream = StreamState(stream_id, self._remote_initial_window, self._local_initial_window)
            self.streams[stream_id] = stream
            self.highest_outbound_stream_id = stream_id
            stream.bodiless = (b":method", b"HEAD") in headers
        elif not stream.sending:
            raise StreamUnusable(f"stream {stream_id} is closed for sending")
        if stream.headers_sent and not end_stream:
            raise StreamUnusable("trailers must end the stream")
        if self.client_side or _status(headers)[:1] != b"1":  # 1xx: a final head follows
            stream.headers_sent = True
        block = self.encoder.encode(headers)
        size = self.max_outbound_frame_size
        flags = END_STREAM if end_stream else 0
        if len(block) <= size:
            self._frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._frame(HEADERS, flags, stream_id, block[:size])
            for start in range(size, len(block), size):
                last = start + size >= len(block)
                self._frame(
                    CONTINUATION, END_HEADERS if last else 0, stream_id, block[start : start + size]
                )
        if end_stream:
            self._end_sending(stream)

    def local_flow_control_window(self, stream_id: int) -> int:
        """How much DATA may go out on the stream now."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.sending:
            raise StreamUnusable(f"stream {stream_id} is closed for sending")
        return min(self.outbound_window, stream.outbound_window)

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        """DATA within the windows and the peer's frame size (the caller sized it)."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.sending:
            raise StreamUnusable(f"stream {stream_id} is closed for sending")
        size = len(data)
        if size > min(self.outbound_window, stream.outbound_window, self.max_outbound_frame_size):
            # Even an empty frame waits while a window is below zero (RFC 9113 6.9.2).
            raise StreamUnusable(f"{size} bytes do not fit the window or frame size")
        self.outbound_window -= size
        stream.outbound_window -= size
        self._frame(DATA, END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:
            self._end_sending(stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM from this side; the stream's late frames are ignored from now."""
        if stream_id in self.streams:
            self._reset(stream_id, error_code)

    def acknowledge_received_data(self, length: int, stream_id: int) -> None:
        """The session passed ``length`` bytes of the stream's DATA on: hand window back."""
        self._hand_back(length)
        stream = self.streams.get(stream_id)
        if stream is not None and stream.receiving:
            increment = stream.inbound.process(length)
            if increment:
                self._window_update(stream_id, increment)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self._out.append(frame_bytes(kind, flags, stream_id, payload))

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))

    def _end_sending(self, stream: StreamState) -> None:
        stream.sending = False
        if not stream.receiving:
            self._close(stream)

    def _close(self, stream: StreamState) -> None:
        opened_by_peer = (stream.stream_id & 1) != self.client_side
        if self.streams.pop(stream.stream_id, None) is not None and opened_by_peer:
            self._open_inbound -= 1

    def _remember_reset(self, stream_id: int) -> None:
        reset_here = self._reset_here
        reset_here[stream_id] = None
        if len(reset_here) > RESETS_KEPT:
            del reset_here[next(iter(reset_here))]

    def _reset(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM; the stream is forgotten, and remembered as reset here."""
        self._frame(RST_STREAM, 0, stream_id, error_code.to_bytes(4, "big"))
        self._remember_reset(stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._close(stream)

    def _stream_error(self, stream_id: int, error_code: int) -> StreamReset:
        """Reset a stream for the peer's frame (one never opened, too): counted as provoked."""
        self._reset(stream_id, error_code)
        self._provoked.append((stream_id, error_code))
        return StreamReset(stream_id, error_code, False)

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Events for the whole frames in ``data`` (and the client preface before them)."""
        position = 0
        if self._preface_left:
            taken = data[: self._preface_left]
            self._preface_seen += taken
            self._preface_left -= len(taken)
            if not CLIENT_PREFACE.startswith(self._preface_seen):
                raise ProtocolViolation(PROTOCOL_ERROR, "preface", "invalid connection preface")
            position = len(taken)
        events: list[Event] = []
        end = len(data)
        while position < end:
            length = int.from_bytes(data[position : position + 3], "big")
            kind = data[position + 3]
            flags = data[position + 4]
            stream_id = int.from_bytes(data[position + 5 : position + 9], "big") & STREAM_ID_MASK
            start = position + FRAME_HEADER_SIZE
            position = start + length
            if position > end:  # the gate passes whole frames only
                raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "truncated frame")
            payload = data[start:position]
            if self._block is not None and kind != CONTINUATION:
                raise ProtocolViolation(
                    PROTOCOL_ERROR, "protocol-error", "header block interrupted by another frame"
                )
            if kind == DATA:
                self._on_data(stream_id, flags, payload, events)
            elif kind == HEADERS:
                self._on_headers(stream_id, flags, payload, events)
            elif kind == CONTINUATION:
                self._on_continuation(stream_id, flags, payload, events)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, events)
            elif kind == RST_STREAM:
                self._on_rst_stream(stream_id, payload, events)
            elif kind == SETTINGS:
                self._on_settings(stream_id, flags, payload, events)
            elif kind == PING:
                self._on_ping(stream_id, flags, payload)
            elif kind == PRIORITY:
                self._on_priority(stream_id, payload, events)
            elif kind == PUSH_PROMISE:
                raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "push is disabled")
        return events

    def _on_data(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "DATA on stream 0")
        length = len(payload)
        data = _unpadded(payload, flags) if flags & PADDED else payload
        if not self._inbound.consume(length):
            raise ProtocolViolation(
                FLOW_CONTROL_ERROR, "flow-control", "DATA past the connection's window"
            )
        stream = self.streams.get(stream_id)
        if stream is None or not stream.receiving:
            self._not_receiving(stream_id, "DATA", events)
            self._hand_back(length)
            return
        if not stream.inbound.consume(length):
            raise ProtocolViolation(
                FLOW_CONTROL_ERROR, "flow-control", f"DATA past stream {stream_id}'s window"
            )
        stream.received_length += len(data)
        expected = stream.expected_length
        end_stream = flags & END_STREAM
        if not stream.headers_received or (
            expected is not None
            and (
                stream.received_length > expected
                or (end_stream and stream.received_length != expected)
            )
        ):  # a body before its head, or not the length its head declared
            self._hand_back(length)
            events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
            return
        events.append(DataReceived(stream_id, data, length))
        if end_stream:
            self._end_receiving(stream, events)

    def _hand_back(self, length: int) -> None:
        """Credit the connection window for DATA passed on, or that nobody will pass on."""
        increment = self._inbound.process(length)
        if increment:
            self._window_update(0, increment)

    def _on_headers(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "HEADERS on stream 0")
        start = 0
        if flags & PADDED:
            payload = _unpadded(payload, flags)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "HEADERS too short")
            start = 5
        fragment = payload[start:]
        end_stream = bool(flags & END_STREAM)
        if not flags & END_HEADERS:
            self._block = (stream_id, [fragment], end_stream)
            return
        self._headers_complete(stream_id, fragment, end_stream, payload[:start], events)

    def _on_continuation(
        self, stream_id: int, flags: int, payload: bytes, events: list[Event]
    ) -> None:
        block = self._block
        if block is None or block[0] != stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "unexpected CONTINUATION")
        block[1].append(payload)
        if flags & END_HEADERS:
            self._block = None
            self._headers_complete(stream_id, b"".join(block[1]), block[2], b"", events)

    def _headers_complete(
        self,
        stream_id: int,
        block: bytes,
        end_stream: bool,
        priority: bytes,
        events: list[Event],
    ) -> None:
        headers = self._decode(block)  # always: the peer's HPACK context must stay in step
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._opened_by_peer(stream_id, events)
            if stream is None:
                return
        elif not stream.receiving:
            self._not_receiving(stream_id, "HEADERS", events)
            return
        if priority and int.from_bytes(priority[:4], "big") & STREAM_ID_MASK == stream_id:
            events.append(self._stream_error(stream_id, PROTOCOL_ERROR))  # depends on itself
            return
        if stream.headers_received:
            if not end_stream:
                events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
                return
            events.append(TrailersReceived(stream_id, headers))
        else:
            bodiless = False
            if self.client_side:
                status = _status(headers)
                if status[:1] == b"1":
                    if end_stream:  # an informational response cannot end the stream
                        events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
                    return  # 1xx: not relayed (as with h2, whose event the session ignored)
                bodiless = stream.bodiless or status in _BODILESS_STATUSES
            length = None if bodiless else _content_length(headers)
            if length == INVALID_LENGTH:  # malformed (RFC 9113 8.1.1): this stream alone
                events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
                return
            stream.headers_received = True
            stream.expected_length = length
            head = ResponseReceived if self.client_side else RequestReceived
            events.append(head(stream_id, headers))
        if end_stream:
            expected = stream.expected_length
            if expected and stream.received_length != expected:
                events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
                return
            self._end_receiving(stream, events)

    def _opened_by_peer(self, stream_id: int, events: list[Event]) -> StreamState | None:
        """A new stream the peer opens with HEADERS (server side), or None when refused."""
        if self.client_side or not stream_id & 1:
            if stream_id <= self.highest_outbound_stream_id and stream_id & 1:
                self._not_receiving(stream_id, "HEADERS", events)  # ours, already closed
                return None
            raise ProtocolViolation(
                PROTOCOL_ERROR, "protocol-error", f"HEADERS on stream {stream_id}, never opened"
            )
        if stream_id <= self.highest_inbound_stream_id:
            self._not_receiving(stream_id, "HEADERS", events)
            return None
        self.highest_inbound_stream_id = stream_id
        if self._open_inbound >= self.local_max_concurrent_streams:
            events.append(self._stream_error(stream_id, REFUSED_STREAM))
            return None
        stream = StreamState(stream_id, self._remote_initial_window, self._local_initial_window)
        self.streams[stream_id] = stream
        self._open_inbound += 1
        return stream

    def _decode(self, block: bytes) -> Headers:
        try:
            headers: Headers = self.decoder.decode(block, raw=True)  # type: ignore[assignment]
        except OversizedHeaderListError as exc:
            raise ProtocolViolation(
                ENHANCE_YOUR_CALM, "header-flood", f"Oversized header block: {exc}"
            ) from exc
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise ProtocolViolation(
                COMPRESSION_ERROR, "protocol-error", f"Error decoding header block: {exc}"
            ) from exc
        if b"cookie" in map(itemgetter(0), headers):  # the names tested in C, not a loop
            return _cookies_joined(headers)
        return headers

    def _not_receiving(self, stream_id: int, what: str, events: list[Event]) -> None:
        """A frame on a stream the peer may not send on: ignored if this side reset it
        (it may have crossed the reset), a stream error if it is closed or the peer ended
        it, a connection error if it was never opened."""
        if stream_id in self._reset_here:
            return
        if stream_id in self.streams or stream_id <= self._highest_id(stream_id):
            events.append(self._stream_error(stream_id, STREAM_CLOSED))
            return
        raise ProtocolViolation(
            PROTOCOL_ERROR, "protocol-error", f"{what} on stream {stream_id}, never opened"
        )

    def _highest_id(self, stream_id: int) -> int:
        """The highest stream id opened so far of ``stream_id``'s parity."""
        outbound = (stream_id & 1) == self.client_side
        return self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id

    def _end_receiving(self, stream: StreamState, events: list[Event]) -> None:
        stream.receiving = False
        events.append(StreamEnded(stream.stream_id))
        if not stream.sending:
            self._close(stream)

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "WINDOW_UPDATE not 4 bytes")
        increment = int.from_bytes(payload, "big") & STREAM_ID_MASK
        if not stream_id:
            if not increment:
                raise ProtocolViolation(
                    PROTOCOL_ERROR, "protocol-error", "WINDOW_UPDATE of 0 on the connection"
                )
            self.outbound_window += increment
            if self.outbound_window > LARGEST_WINDOW:
                raise ProtocolViolation(
                    FLOW_CONTROL_ERROR, "flow-control", "connection window past 2^31-1"
                )
            events.append(WindowUpdated(0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._highest_id(stream_id):
                raise ProtocolViolation(
                    PROTOCOL_ERROR, "protocol-error", f"WINDOW_UPDATE on idle stream {stream_id}"
                )
            return  # closed: it may have crossed the end
        if not increment:
            events.append(self._stream_error(stream_id, PROTOCOL_ERROR))
            return
        stream.outbound_window += increment
        if stream.outbound_window > LARGEST_WINDOW:
            events.append(self._stream_error(stream_id, FLOW_CONTROL_ERROR))
            return
        events.append(WindowUpdated(stream_id))

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "RST_STREAM not 4 bytes")
        if not stream_id or stream_id > self._highest_id(stream_id):
            raise ProtocolViolation(
                PROTOCOL_ERROR, "protocol-error", f"RST_STREAM on idle stream {stream_id}"
            )
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self._close(stream)
        events.append(StreamReset(stream_id, int.from_bytes(payload, "big"), True))

    def _on_settings(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "SETTINGS ACK with data")
            if self._settings_unacked:
                self._acknowledged(self._settings_unacked.pop(0))
            events.append(_SETTINGS_ACKNOWLEDGED)
            return
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "SETTINGS not 6-byte entries")
        for offset in range(0, len(payload), 6):
            code = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            self._apply_remote_setting(code, value)
        self._frame(SETTINGS, ACK, 0, b"")
        events.append(_REMOTE_SETTINGS_CHANGED)

    def _apply_remote_setting(self, code: int, value: int) -> None:
        if code == MAX_CONCURRENT_STREAMS:
            self.remote_max_concurrent_streams = value
        elif code == INITIAL_WINDOW_SIZE:
            if value > LARGEST_WINDOW:
                raise ProtocolViolation(
                    FLOW_CONTROL_ERROR, "flow-control", f"initial window {value} past 2^31-1"
                )
            delta = value - self._remote_initial_window
            self._remote_initial_window = value
            for stream in self.streams.values():
                stream.outbound_window += delta
                if stream.outbound_window > LARGEST_WINDOW:
                    raise ProtocolViolation(
                        FLOW_CONTROL_ERROR, "flow-control", "a stream's window past 2^31-1"
                    )
        elif code == MAX_FRAME_SIZE:
            if not DEFAULT_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
                raise ProtocolViolation(
                    PROTOCOL_ERROR, "protocol-error", f"max frame size {value} out of range"
                )
            self.max_outbound_frame_size = value
        elif code in (ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL):
            if value > 1:
                raise ProtocolViolation(
                    PROTOCOL_ERROR, "protocol-error", f"setting {code} must be 0 or 1"
                )
        elif code == HEADER_TABLE_SIZE:
            self.encoder.header_table_size = value

    def _acknowledged(self, settings: dict[int, int]) -> None:
        """The peer applied SETTINGS this side sent: streams' receive windows follow."""
        window = settings.get(INITIAL_WINDOW_SIZE)
        if window is not None:
            delta = window - self._local_initial_window
            self._local_initial_window = window
            for stream in self.streams.values():
                stream.inbound.opened(delta)

    def _on_ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "PING on a stream")
        if len(payload) != 8:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "PING not 8 bytes")
        if not flags & ACK:
            self._frame(PING, ACK, 0, payload)

    def _on_priority(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "PRIORITY not 5 bytes")
        if int.from_bytes(payload[:4], "big") & STREAM_ID_MASK == stream_id:
            events.append(self._stream_error(stream_id, PROTOCOL_ERROR))  # depends on itself


def _status(headers: Headers) -> bytes:
    """A response's ``:status`` (its first field, as RFC 9113 8.3 puts it), or b""."""
    return headers[0][1] if headers and headers[0][0] == b":status" else b""


def _unpadded(payload: bytes, flags: int) -> bytes:
    """A padded frame's content (RFC 9113 6.1): padding as long as the frame or longer is
    a connection error."""
    if not payload:
        raise ProtocolViolation(FRAME_SIZE_ERROR, "frame-size", "padded frame without length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolViolation(PROTOCOL_ERROR, "protocol-error", "padding past the frame")
    return payload[1 : len(payload) - pad]


def _cookies_joined(headers: Headers) -> Headers:
    """Cookie crumbs joined into one field, last (RFC 9113 8.2.3), as h2 gave them: what is
    forwarded is what a strict receiver would rebuild, so that an empty crumb is refused
    here (its "; " leaves whitespace at the end) rather than by the upstream, which would
    end the connection every caller shares. Never indexed: a cookie is a credential."""
    crumbs = [value for name, value in headers if name == b"cookie"]
    joined: Headers = [field for field in headers if field[0] != b"cookie"]
    joined.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(crumbs)))
    return joined


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The body length a message declares; ``INVALID_LENGTH`` when a value is not a number
    or two disagree (RFC 9110 8.6)."""
    fields = list(headers)
    declared = list(map(itemgetter(0), fields)).count(b"content-length")  # no Python loop
    if not declared:
        return None
    if declared == 1:  # almost every message: one value, read without a loop either
        value = dict(fields)[b"content-length"]
        return int(value) if value.isdigit() else INVALID_LENGTH
    length = None
    for name, value in fields:
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                return INVALID_LENGTH
            length = int(value)
    return length


def _settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(
        code.to_bytes(2, "big") + value.to_bytes(4, "big") for code, value in settings.items()
    )
