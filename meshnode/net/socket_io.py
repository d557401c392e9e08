"""A plain TCP socket read and written in place, for the request path's latency.

trio's ``SocketStream.receive_some`` tries the read first (on a connection that
takes turns with its peer, nearly always EAGAIN), then waits, reads, and
yields once more; a write goes through the connection's writer task, a
scheduler round after it was queued. At one request at a time those rounds
and syscalls are most of what a proxy adds. ``InPlace`` waits until the
socket is readable and reads it at once, and writes what the socket takes
now from the task that has the bytes; the connections keep their writer task
for everything else (batches, a full socket, TLS, which this cannot do).
"""

from __future__ import annotations

import os

import trio


class InPlace:
    __slots__ = ("_socket",)

    def __init__(self, socket: trio.socket.SocketType) -> None:
        self._socket = socket

    @classmethod
    def of(cls, transport: trio.abc.Stream) -> InPlace | None:
        """One for a plain TCP transport; None for anything else (TLS, memory streams)."""
        return cls(transport.socket) if type(transport) is trio.SocketStream else None

    async def receive(self, max_bytes: int) -> bytes:
        """The next bytes, once the socket is readable (b"" at the peer's end); raises
        ``OSError`` or ``trio.ClosedResourceError`` as a broken or closed socket does."""
        while True:
            await trio.lowlevel.wait_readable(self._socket)
            try:
                return os.read(self._socket.fileno(), max_bytes)
            except BlockingIOError:
                continue

    def send_now(self, data: bytes | bytearray) -> int:
        """How much of ``data`` the socket takes at once: 0 when it is full, closed or broken
        (the connection's writer, sending the rest, meets the error and ends it). A closed
        socket's descriptor is -1, never a number since given to another socket."""
        fd = self._socket.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0
