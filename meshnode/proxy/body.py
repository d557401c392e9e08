"""A request body that another try can send again, within a bounded buffer."""

from __future__ import annotations

import math

from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.stream import CANCEL, Data, EndOfStream, Stream, Trailers
from meshnode.proxy.headers import HeaderList


class RequestBody:
    """The client's body: read once, kept up to ``limit`` bytes so that a retry can replay it.

    Each try calls ``send_to``: it replays what was kept, then goes on reading
    from the client. Once the body outgrows ``limit`` nothing more is kept and
    ``replayable`` turns False: the request will not be retried.

    A body that grows past ``max_size`` (``[limits] max_request_body``, for
    bodies that did not declare their length) resets the client's stream.
    """

    def __init__(self, client: Stream, limit: int, max_size: float = math.inf) -> None:
        self._client = client
        self._limit = limit
        self._max_size = max_size
        self._received = 0
        self._chunks: list[bytes] = []
        self._kept = 0
        self._trailers: HeaderList | None = None
        self._complete = False
        self._unacked = 0
        self.replayable = True

    async def send_to(self, sink: Stream) -> None:
        if self._unacked:  # taken from the client by a try that was cut short: kept now
            self._client.ack(self._unacked)
            self._unacked = 0
        for chunk in self._chunks:
            await sink.send_data(chunk)
        if self._complete:
            await self._finish(sink)
            return
        client = self._client
        while True:
            item = await client.receive()
            if type(item) is Data:
                end = client.consume_end()
                self._keep(item.data)
                if end:
                    self._complete = True
                self._unacked = item.flow_length
                if item.data or end:
                    await sink.send_data(item.data, end_stream=end)
                self._unacked = 0
                client.ack(item.flow_length)
                if end:
                    return
            elif type(item) is Trailers:
                self._trailers = strip_hop_by_hop(item.headers)
                self._complete = True
                await self._finish(sink)
                return
            elif type(item) is EndOfStream:
                self._complete = True
                await sink.end()
                return

    async def read_all(self, limit: int) -> bytes | None:
        """The whole body (kept and yet unread), if it fits ``limit``; None if it cannot be had."""
        self._limit = max(self._limit, limit)
        if self._unacked:
            self._client.ack(self._unacked)
            self._unacked = 0
        client = self._client
        while self.replayable and not self._complete:
            item = await client.receive()
            if type(item) is Data:
                self._keep(item.data)
                client.ack(item.flow_length)
            elif type(item) is Trailers:
                self._trailers = strip_hop_by_hop(item.headers)
                self._complete = True
            elif type(item) is EndOfStream:
                self._complete = True
        return b"".join(self._chunks) if self.replayable else None

    async def drain(self, max_bytes: int) -> None:
        """Read and drop the rest of the body, up to ``max_bytes`` more; return at its end
        (or when it is larger than that: the caller then resets the stream)."""
        if self._unacked:
            self._client.ack(self._unacked)
            self._unacked = 0
        client = self._client
        dropped = 0
        while not self._complete and dropped <= max_bytes:
            item = await client.receive()
            if type(item) is Data:
                dropped += item.flow_length
                client.ack(item.flow_length)
                self._complete = client.consume_end()
            elif type(item) is Trailers or type(item) is EndOfStream:
                self._complete = True

    def _keep(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._max_size:
            client = self._client
            client.refuse(CANCEL, "request-too-large", f"body over {self._max_size:g} bytes")
            assert client.error is not None
            raise client.error
        if not self.replayable or not data:
            return
        if self._kept + len(data) > self._limit:
            self.replayable = False
            self._chunks.clear()
            return
        self._chunks.append(data)
        self._kept += len(data)

    async def _finish(self, sink: Stream) -> None:
        if self._trailers is not None:
            await sink.send_headers(self._trailers, end_stream=True)
        else:
            await sink.end()
