"""A hostile HTTP/2 peer: raw frames over a real socket, and what the node answered."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable

import attrs
import hpack
import trio
from hyperframe.frame import HeadersFrame, RstStreamFrame, SettingsFrame

from meshnode.net.h2.framing import CLIENT_PREFACE, FRAME_HEADER_SIZE, GOAWAY, RST_STREAM
from meshnode.policy.units import Address

HELLO = CLIENT_PREFACE + bytes(SettingsFrame(0).serialize())
SETTINGS_ACK = bytes(SettingsFrame(0, flags=["ACK"]).serialize())


@attrs.frozen
class RawFrame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """The error code of a GOAWAY or RST_STREAM."""
        start = 4 if self.type == GOAWAY else 0
        return int.from_bytes(self.payload[start : start + 4], "big")


def parse_frames(data: bytes) -> list[RawFrame]:
    frames = []
    position = 0
    while len(data) - position >= FRAME_HEADER_SIZE:
        length = int.from_bytes(data[position : position + 3], "big")
        end = position + FRAME_HEADER_SIZE + length
        if end > len(data):
            break
        frames.append(
            RawFrame(
                data[position + 3],
                data[position + 4],
                int.from_bytes(data[position + 5 : position + 9], "big") & 0x7FFFFFFF,
                data[position + FRAME_HEADER_SIZE : end],
            )
        )
        position = end
    return frames


@attrs.define
class Exchange:
    """Everything the node sent back, and whether it closed the connection."""

    frames: list[RawFrame]
    closed: bool

    def goaway(self) -> RawFrame | None:
        return next((frame for frame in self.frames if frame.type == GOAWAY), None)

    def resets(self) -> list[RawFrame]:
        return [frame for frame in self.frames if frame.type == RST_STREAM]


async def attack(
    address: Address,
    chunks: Iterable[bytes],
    *,
    hello: bytes = HELLO + SETTINGS_ACK,
    within: float = 10.0,
    linger: float = 0.0,
    tls: ssl.SSLContext | None = None,
) -> Exchange:
    """Send ``hello``, then every chunk (as fast as the node reads), then wait up to
    ``within`` seconds for the node to close; ``linger`` > 0 stops waiting after that long.
    With ``tls``, all of it goes over TLS (the inbound listener's mTLS)."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls)
        await stream.do_handshake()
    received = bytearray()
    closed = False

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(hello)  # the node may close before it has all
            for chunk in chunks:
                await stream.send_all(chunk)

    async def receive(cancel: trio.CancelScope) -> None:
        nonlocal closed
        with contextlib.suppress(trio.BrokenResourceError):  # a reset is a close too
            while data := await stream.receive_some(65536):
                received.extend(data)
        closed = True
        cancel.cancel()

    with trio.move_on_after(linger or within):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, nursery.cancel_scope)
            await send()
    await stream.aclose()
    if not closed and not linger:
        raise AssertionError(f"the node did not close the connection within {within}s")
    return Exchange(parse_frames(bytes(received)), closed)


def request_frame(
    stream_id: int,
    headers: list[tuple[bytes, bytes]],
    *,
    end_stream: bool = True,
    encoder: hpack.Encoder | None = None,
) -> bytes:
    """A HEADERS frame with exactly these fields, uppercase or invalid ones included."""
    block = (encoder or hpack.Encoder()).encode(headers)
    flags = ["END_HEADERS", *(["END_STREAM"] if end_stream else [])]
    return bytes(HeadersFrame(stream_id, data=block, flags=flags).serialize())


def get(authority: bytes, path: bytes = b"/") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", authority),
    ]


def reset_frame(stream_id: int, code: int = 0x8) -> bytes:
    return bytes(RstStreamFrame(stream_id, error_code=code).serialize())
