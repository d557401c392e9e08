"""Theory of operation: a frame gate in front of the HTTP/2 codec.

What a proxy must refuse before any frame is parsed is refused here, by looking
at 9-byte frame headers before the codec (``codec.py``) sees the bytes; the gate
was first written for the gaps h2 left, and the codec relies on it for them:

* GOAWAY frames are taken out of the byte stream and reported; the session
  applies RFC 9113 section 6.8 itself (no new streams, streams above
  ``last_stream_id`` refused, the rest carry on), and writes its own GOAWAY
  frames raw (h2 moved the whole connection to CLOSED on any GOAWAY,
  python-hyper/h2#1181, so streams in flight could not finish).
* A frame larger than the advertised maximum is refused as soon as its header
  arrives, not buffered whole first (a 9-byte header announcing 16 MiB).
* PING, SETTINGS, PRIORITY, RST_STREAM and WINDOW_UPDATE frames are charged to
  a per-connection budget (``FrameRates``), and consecutive empty
  DATA/HEADERS/CONTINUATION frames counted: the floods of SECURITY-NOTES, Rapid
  Reset among them. Past a budget it raises ``FrameError`` with
  ENHANCE_YOUR_CALM.
* A header block whose encoded size is already over ``max_header_list_size``
  (HPACK never encodes a field list larger than that list's decoded size) is
  refused with ENHANCE_YOUR_CALM before it is collected, let alone decoded.
* A peer that starts a frame or a header block and then goes quiet (HTTP/2
  slowloris) holds a stream slot and a buffer: ``stalled_since`` tells the
  session since when, so its header timeout can end the connection.

The gate holds at most one incomplete frame, passes complete frames on in one
slice per call, and never parses anything but frame headers (and the GOAWAY
and padding bytes it must read).
"""

from __future__ import annotations

import attrs

from meshnode.policy.models import FrameRates, Limits
from meshnode.resilience.core.token_bucket import TokenBucket

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6
ENHANCE_YOUR_CALM = 0xB
BUDGET_SECONDS = 10.0  # each frame budget holds this many seconds' worth of its rate
WINDOW_UPDATES_PER_DATA_FRAME = 10  # Envoy's allowance, earned by every DATA frame sent

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8

# Frame types charged to a budget, and the budget's name (a ``FrameRates`` field).
_CHARGED = {
    PING: "ping",
    SETTINGS: "settings",
    PRIORITY: "priority",
    RST_STREAM: "resets_received",
    WINDOW_UPDATE: "window_update",
}
_ACKABLE = frozenset({PING, SETTINGS})


class FrameError(Exception):
    """The peer broke framing or a budget; ``error_code`` goes into the GOAWAY that answers.

    ``kind`` names the violation for metrics and logs (``frame-size``, ``ping-flood``...).
    """

    def __init__(self, error_code: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.kind = kind


@attrs.frozen
class GoAwayReceived:
    last_stream_id: int
    error_code: int
    debug_data: bytes


class FrameBudgets:
    """One token bucket per charged frame kind, for one connection."""

    def __init__(self, rates: FrameRates, now: float) -> None:
        self._buckets = {
            name: TokenBucket(rate, max(1.0, rate * BUDGET_SECONDS), now)
            for name, rate in attrs.asdict(rates).items()
        }

    def spend(self, name: str, now: float) -> None:
        """Charge one frame of ``name``; raise ENHANCE_YOUR_CALM once the budget is gone."""
        if self._buckets[name].take(now):
            kind = name.replace("_", "-")
            raise FrameError(
                ENHANCE_YOUR_CALM, f"{kind}-flood", f"too many {kind.replace('-', ' ')}"
            )

    def earn(self, name: str, tokens: float) -> None:
        self._buckets[name].give(tokens)


class FrameGate:
    def __init__(self, limits: Limits, *, expect_preface: bool, now: float) -> None:
        self._max_frame_size = limits.max_frame_size
        self._max_empty = limits.max_consecutive_empty_frames
        self._max_block = limits.max_header_list_size
        self._block_size = 0
        self.budgets = FrameBudgets(limits.frame_rates, now)
        self._preface_left = len(CLIENT_PREFACE) if expect_preface else 0
        self._buffer = bytearray()
        self._empty_in_a_row = 0
        self._in_header_block = False
        # Since when an incomplete frame or header block has been waiting for the peer;
        # a new connection waits for its preface from the start.
        self.stalled_since: float | None = now if expect_preface else None

    def feed(self, data: bytes, now: float) -> tuple[bytes, list[GoAwayReceived]]:
        """Take received bytes; return what the codec should parse and the GOAWAYs taken out."""
        buffer = self._buffer
        buffer += data
        start = position = 0
        if self._preface_left:
            position = min(self._preface_left, len(buffer))
            self._preface_left -= position
            if self._preface_left:
                passed = bytes(buffer)
                buffer.clear()
                return passed, []
        chunks: list[bytes] = []
        goaways: list[GoAwayReceived] = []
        end_of_buffer = len(buffer)
        while end_of_buffer - position >= FRAME_HEADER_SIZE:
            length = int.from_bytes(buffer[position : position + 3], "big")
            if length > self._max_frame_size:
                raise FrameError(
                    FRAME_SIZE_ERROR,
                    "frame-size",
                    f"frame of {length} bytes exceeds {self._max_frame_size}",
                )
            frame_end = position + FRAME_HEADER_SIZE + length
            if frame_end > end_of_buffer:
                break
            kind = buffer[position + 3]
            if kind == GOAWAY:
                chunks.append(bytes(buffer[start:position]))
                goaways.append(_parse_goaway(buffer[position:frame_end]))
                start = frame_end
            elif kind != DATA or length == 0 or buffer[position + 4] & PADDED:
                self._inspect(kind, buffer, position, length, now)
            else:
                self._empty_in_a_row = 0
            position = frame_end
        chunks.append(bytes(buffer[start:position]))
        del buffer[:position]
        if buffer or self._in_header_block:
            if self.stalled_since is None:
                self.stalled_since = now
        else:
            self.stalled_since = None
        return b"".join(chunks) if len(chunks) > 1 else chunks[0], goaways

    def _inspect(
        self, kind: int, buffer: bytearray, position: int, length: int, now: float
    ) -> None:
        """Charge a complete frame that is not a DATA frame with payload to its budget."""
        flags = buffer[position + 4]
        budget = _CHARGED.get(kind)
        if budget is not None:
            if kind not in _ACKABLE or not flags & ACK:
                self.budgets.spend(budget, now)
            return
        if kind in (HEADERS, PUSH_PROMISE, CONTINUATION):
            self._block_size = length + (self._block_size if kind == CONTINUATION else 0)
            if self._block_size > self._max_block:
                raise FrameError(
                    ENHANCE_YOUR_CALM,
                    "header-flood",
                    f"a header block over {int(self._max_block)} bytes",
                )
            self._in_header_block = not flags & END_HEADERS
        payload = length
        if flags & PADDED and kind in (DATA, HEADERS) and length:
            payload = length - 1 - buffer[position + FRAME_HEADER_SIZE]
        if payload > 0 or (kind != CONTINUATION and flags & END_STREAM):
            self._empty_in_a_row = 0
            return
        self._empty_in_a_row += 1
        if self._empty_in_a_row > self._max_empty:
            raise FrameError(
                ENHANCE_YOUR_CALM,
                "empty-frame-flood",
                f"{self._empty_in_a_row} frames in a row without payload",
            )


def _parse_goaway(frame: bytearray) -> GoAwayReceived:
    stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
    payload = frame[FRAME_HEADER_SIZE:]
    if stream_id != 0 or len(payload) < 8:
        raise FrameError(PROTOCOL_ERROR, "malformed-goaway", "malformed GOAWAY frame")
    return GoAwayReceived(
        last_stream_id=int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
        error_code=int.from_bytes(payload[4:8], "big"),
        debug_data=bytes(payload[8:]),
    )


def frame_bytes(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as it goes on the wire (RFC 9113 4.1)."""
    header = len(payload).to_bytes(3, "big") + bytes((kind, flags))
    return header + stream_id.to_bytes(4, "big") + payload


def goaway_frame(last_stream_id: int, error_code: int = 0, debug_data: bytes = b"") -> bytes:
    """A serialized GOAWAY, written by the session itself (the codec never sees one)."""
    payload = last_stream_id.to_bytes(4, "big") + error_code.to_bytes(4, "big") + debug_data
    return frame_bytes(GOAWAY, 0, 0, payload)
