"""A transport whose first bytes were already read, and are given back first.

The admin listener reads a request head before handing a WebSocket upgrade
on. (The outbound listener reads the first bytes to tell HTTP/1.1 from
HTTP/2 too, but gives them to the session it starts, HTTP/2 or HTTP/1.1, so
that every read and write of the request path goes to the transport without
this layer.)
"""

from __future__ import annotations

import trio


class Replay(trio.abc.HalfCloseableStream):
    def __init__(self, transport: trio.abc.Stream, first: bytes) -> None:
        self.transport = transport
        self._first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._first:
            size = len(self._first) if max_bytes is None else max_bytes
            data, self._first = self._first[:size], self._first[size:]
            return data
        return bytes(await self.transport.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close, where the transport can (TCP can, TLS cannot: then nothing)."""
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()
