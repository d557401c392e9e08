"""A real socket pair for a connection under test: its end as a trio stream, the far end
as a plain non-blocking socket the test reads in place (no task of its own)."""

from __future__ import annotations

import socket

import trio


def socket_pair(buffer: int | None = None) -> tuple[trio.SocketStream, socket.socket]:
    """``buffer``: small socket buffers, so that a write of more stops part way."""
    near, far = socket.socketpair()
    if buffer is not None:
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    far.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(near)), far


def read_now(far: socket.socket) -> bytes:
    """What has arrived at the far end, without letting any task run."""
    data = b""
    while True:
        try:
            chunk = far.recv(65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk
