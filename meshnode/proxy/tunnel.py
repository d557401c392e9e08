"""A WebSocket tunnel, once open: bytes both ways, held to its limits, closed cleanly.

The node passes WebSocket frames through untouched, but follows where each
direction's frames begin and end (``FrameCursor``: headers only, payloads are
skipped by length). So when the node itself must end a tunnel (``tunnel_idle``,
or a drain reaching its deadline) it can say so in WebSocket terms: each side
that sits between two frames gets a Close frame (1001 "going away", masked
toward the upstream as a client's must be) before its stream ends; a side caught
inside a frame is reset instead, since a frame cut short cannot be repaired.

A byte stream is only ever interrupted while it waits to receive: sends are
shielded (and bounded by ``SEND_GRACE``), so a Close frame never lands inside
another frame.
"""

from __future__ import annotations

import os
import struct
from typing import Final

import trio

from meshnode.errors import TunnelLimit
from meshnode.net.stream import CANCEL, Data, EndOfStream, Stream, StreamReset, Trailers

GOING_AWAY: Final = 1001
SEND_GRACE: Final = 5.0  # seconds one chunk may take to go out once the tunnel is closing


class FrameCursor:
    """Where a WebSocket byte stream stands: between two frames, or inside one."""

    __slots__ = ("_header", "_left", "broken")

    def __init__(self) -> None:
        self._header = bytearray()  # the current frame's header, while incomplete
        self._left = 0  # payload bytes of the current frame still to come
        self.broken = False  # a chunk went out only in part: position unknown

    @property
    def between_frames(self) -> bool:
        return not self.broken and not self._header and not self._left

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                step = min(self._left, len(view))
                self._left -= step
                view = view[step:]
                continue
            self._header.append(view[0])
            view = view[1:]
            need = _header_size(self._header)
            if need is not None and len(self._header) == need:
                self._left = _payload_size(self._header)
                self._header.clear()


def _header_size(header: bytearray) -> int | None:
    """The whole header's size, once its first two bytes are known (RFC 6455 section 5.2)."""
    if len(header) < 2:
        return None
    size = 2 + (4 if header[1] & 0x80 else 0)
    length = header[1] & 0x7F
    return size + (2 if length == 126 else 8 if length == 127 else 0)


def _payload_size(header: bytearray) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int(struct.unpack(">H", header[2:4])[0])
    if length == 127:
        return int(struct.unpack(">Q", header[2:10])[0])
    return length


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A Close frame; ``masked`` for one sent toward a server (clients must mask)."""
    payload = struct.pack(">H", code) + reason.encode()[:123]
    if not masked:
        return bytes([0x88, len(payload)]) + payload
    key = os.urandom(4)
    return (
        bytes([0x88, 0x80 | len(payload)])
        + key
        + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    )


class Tunnel:
    """One tunnel's two directions; ``close`` ends it from outside (a drain)."""

    def __init__(self, idle: float, registry: set[Tunnel]) -> None:
        self.idle = idle
        self.last = trio.current_time()
        self._registry = registry
        self._closing: str | None = None  # why the node ends it, once it does
        self._failure: StreamReset | None = None  # a side that broke off
        self._close_requested = trio.Event()

    def close(self, why: str) -> None:
        if self._closing is None:
            self._closing = why
        self._close_requested.set()

    async def carry(self, client: Stream, upstream: Stream) -> None:
        """Relay both ways until both ends finish, or the node ends the tunnel
        (``TunnelLimit`` once each side was told)."""
        to_upstream, to_client = FrameCursor(), FrameCursor()
        self._registry.add(self)
        try:
            async with trio.open_nursery() as nursery:
                pipes = [
                    (client, upstream, to_upstream),
                    (upstream, client, to_client),
                ]
                done = trio.Semaphore(0)
                for source, sink, cursor in pipes:
                    nursery.start_soon(self._pipe, source, sink, cursor, done)
                nursery.start_soon(self._watch, nursery.cancel_scope)
                await done.acquire()
                await done.acquire()
                nursery.cancel_scope.cancel()
        finally:
            self._registry.discard(self)
        if self._failure is not None:
            raise self._failure
        if self._closing is None:
            return
        for sink, cursor, masked in ((client, to_client, False), (upstream, to_upstream, True)):
            await _say_goodbye(sink, cursor, masked=masked)
        # The closing handshake: each side answers with its own Close and ends.
        with trio.move_on_after(SEND_GRACE):
            async with trio.open_nursery() as nursery:
                for stream in (client, upstream):
                    nursery.start_soon(_until_ended, stream)
        raise TunnelLimit(self._closing)

    async def _pipe(
        self, source: Stream, sink: Stream, cursor: FrameCursor, done: trio.Semaphore
    ) -> None:
        try:
            while True:
                item = await source.receive()  # the one place a pipe may be interrupted
                if type(item) is Data:
                    end = source.consume_end()
                    self.last = trio.current_time()
                    await self._send(sink, cursor, item.data, end)
                    source.ack(item.flow_length)
                    if end:
                        return
                elif type(item) is EndOfStream or type(item) is Trailers:
                    with trio.CancelScope(shield=True):
                        await sink.end()
                    return
        except StreamReset as reset:
            self._failure = self._failure or reset
            done.release()  # the other side is ended with it
        finally:
            done.release()

    async def _send(self, sink: Stream, cursor: FrameCursor, data: bytes, end: bool) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SEND_GRACE if self._closing else float("inf")) as sending:
                await sink.send_data(data, end_stream=end)
        if sending.cancelled_caught:
            cursor.broken = True
            raise StreamReset(sink, CANCEL)
        cursor.feed(data)

    async def _watch(self, scope: trio.CancelScope) -> None:
        """End the tunnel once no byte went either way for ``idle``, or when asked."""
        while not self._close_requested.is_set():
            due = self.last + self.idle
            if trio.current_time() >= due:
                self.close(f"no byte either way for its tunnel_idle of {self.idle:g}s")
                break
            with trio.move_on_at(due):
                await self._close_requested.wait()
        scope.cancel()


async def _until_ended(stream: Stream) -> None:
    """Read (and drop) what ``stream``'s peer still sends, until it ends."""
    try:
        while True:
            item = await stream.receive()
            if type(item) is Data:
                stream.ack(item.flow_length)
            else:
                return
    except StreamReset:
        return


async def _say_goodbye(sink: Stream, cursor: FrameCursor, *, masked: bool) -> None:
    """A Close frame and the end of the stream if ``sink`` is between frames; else a reset."""
    if sink.finished or sink.local_closed:
        return
    if not cursor.between_frames:
        sink.reset(CANCEL)
        return
    frame = close_frame(GOING_AWAY, "going away", masked=masked)
    try:
        with trio.move_on_after(SEND_GRACE):
            await sink.send_data(frame, end_stream=True)
    except StreamReset:
        return
