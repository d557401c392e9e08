"""Theory of operation: a frame gate in front of h2.

h2 has two gaps that a proxy cannot live with, and both are closed by looking
at frame headers before h2 sees the bytes:

* h2 moves the whole connection to CLOSED on any GOAWAY, sent or received
  (python-hyper/h2#1181), so streams in flight could not finish. The gate takes
  GOAWAY frames out of the byte stream and reports them; the session applies
  RFC 9113 section 6.8 itself (no new streams, streams above ``last_stream_id``
  refused, the rest carry on), and writes its own GOAWAY frames raw.
* h2 buffers a whole declared frame before checking its length, so a 9-byte
  header announcing 16 MiB makes it hold 16 MiB. The gate refuses a frame
  larger than the advertised maximum as soon as its header arrives.

The gate holds at most one incomplete frame, passes complete frames on in one
slice per call, and never parses anything but the 9-byte headers.
"""

from __future__ import annotations

import attrs
from hyperframe.frame import GoAwayFrame

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9
GOAWAY_TYPE = 0x7
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6


class FrameError(Exception):
    """The peer broke framing; ``error_code`` goes into the GOAWAY that answers it."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code


@attrs.frozen
class GoAwayReceived:
    last_stream_id: int
    error_code: int
    debug_data: bytes


class FrameGate:
    def __init__(self, *, max_frame_size: int, expect_preface: bool) -> None:
        self._max_frame_size = max_frame_size
        self._preface_left = len(CLIENT_PREFACE) if expect_preface else 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, list[GoAwayReceived]]:
        """Take received bytes; return what h2 should parse and the GOAWAYs taken out."""
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
                    FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {self._max_frame_size}"
                )
            frame_end = position + FRAME_HEADER_SIZE + length
            if frame_end > end_of_buffer:
                break
            if buffer[position + 3] == GOAWAY_TYPE:
                chunks.append(bytes(buffer[start:position]))
                goaways.append(_parse_goaway(buffer[position:frame_end]))
                start = frame_end
            position = frame_end
        chunks.append(bytes(buffer[start:position]))
        del buffer[:position]
        return b"".join(chunks) if len(chunks) > 1 else chunks[0], goaways


def _parse_goaway(frame: bytearray) -> GoAwayReceived:
    stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
    payload = frame[FRAME_HEADER_SIZE:]
    if stream_id != 0 or len(payload) < 8:
        raise FrameError(PROTOCOL_ERROR, "malformed GOAWAY frame")
    return GoAwayReceived(
        last_stream_id=int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
        error_code=int.from_bytes(payload[4:8], "big"),
        debug_data=bytes(payload[8:]),
    )


def goaway_frame(last_stream_id: int, error_code: int = 0, debug_data: bytes = b"") -> bytes:
    """A serialized GOAWAY, written past h2 so that h2 keeps the connection open."""
    frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
    frame.additional_data = debug_data
    return bytes(frame.serialize())
