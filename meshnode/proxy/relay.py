"""Copying a body from one stream to another, handing flow-control window back as it goes."""

from __future__ import annotations

from collections.abc import Callable

from meshnode.net.http1.hop_by_hop import strip_hop_by_hop
from meshnode.net.stream import Data, EndOfStream, Stream, Trailers


async def relay_body(
    source: Stream, sink: Stream, tap: Callable[[bytes], None] | None = None
) -> None:
    """Copy DATA and trailers from ``source`` to ``sink``; ``tap`` sees each chunk passed on.

    A received chunk is acknowledged only once ``sink`` took it, so flow control
    holds end to end. The end marker rides on the last DATA frame, and empty
    DATA frames are never relayed alone: peers (nghttp2 among them) treat a run
    of them as a flood.
    """
    while True:
        item = await source.receive()
        if type(item) is Data:
            end = source.consume_end()
            if item.data or end:
                await sink.send_data(item.data, end_stream=end)
            if tap is not None:
                tap(item.data)
            source.ack(item.flow_length)
            if end:
                return
        elif type(item) is Trailers:
            await sink.send_headers(strip_hop_by_hop(item.headers), end_stream=True)
            return
        elif type(item) is EndOfStream:
            await sink.end()
            return
