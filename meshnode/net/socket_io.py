"""How a connection's bytes come and go: its transport, read and written in place on
plain TCP, for the request path's latency.

trio's ``SocketStream.receive_some`` tries the read first (on a connection that
takes turns with its peer, nearly always EAGAIN), then waits, reads, and
yields once more; a write goes through the connection's writer task, a
scheduler round after it was queued. At one request at a time those rounds
and syscalls are most of what a proxy adds. ``TransportIO`` waits until a
plain TCP socket is readable and reads it at once, and lets the task that has
the bytes write what the socket takes now, unless the writer's own send is
under way; anything else (a full socket, TLS, memory streams) goes through
the transport and the connection's writer task as before.
"""

from __future__ import annotations

import os

import trio

RECEIVE_SIZE = 65536  # the most one read takes from a transport


class TransportIO:
    __slots__ = ("_received", "_sending", "_socket", "transport")

    def __init__(self, transport: trio.abc.Stream, received: bytes = b"") -> None:
        """``received``: bytes already read from ``transport`` (to tell the protocol), which
        ``receive`` gives first."""
        self.transport = transport
        self._received = received
        self._socket = transport.socket if type(transport) is trio.SocketStream else None
        self._sending = False  # the writer task is inside send_all

    async def receive(self, max_bytes: int) -> bytes:
        """The next bytes (b"" at the peer's end); raises as the transport does when it is
        broken or closed (``OSError`` for a socket read in place)."""
        if self._received:
            received, self._received = self._received, b""
            return received
        sock = self._socket
        if sock is None:
            return bytes(await self.transport.receive_some(max_bytes))
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), max_bytes)
            except BlockingIOError:
                continue

    async def send_all(self, data: bytes | bytearray) -> None:
        """The writer task's send; nothing is written in place while it is under way."""
        self._sending = True
        try:
            await self.transport.send_all(data)
        finally:
            self._sending = False

    @property
    def can_send_now(self) -> bool:
        return self._socket is not None and not self._sending

    def send_now(self, data: bytes | bytearray) -> int:
        """How much of ``data`` the socket takes at once, if ``can_send_now``: 0 when it is
        full, closed or broken (the writer, sending the rest, meets the error and ends the
        connection). A closed socket's descriptor is -1, never a number since given to
        another socket."""
        sock = self._socket
        if sock is None or self._sending:
            return 0
        fd = sock.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0
