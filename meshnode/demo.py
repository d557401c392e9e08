"""A demo upstream for the quickstart: answers every path, echoes request bodies.

It runs on meshnode's own HTTP/2 listener, so ``meshnode demo-upstream`` needs
nothing else installed.
"""

from __future__ import annotations

import json

from meshnode.net.listener import Peer
from meshnode.net.stream import Data, EndOfStream, Stream, StreamReset
from meshnode.policy.units import Address


async def answer(stream: Stream, peer: Peer) -> None:
    headers = dict(stream.headers or [])
    received = 0
    body = bytearray()
    try:
        while True:
            item = await stream.receive()
            if isinstance(item, Data):
                received += len(item.data)
                body += item.data[: 65536 - len(body)]
                stream.ack(item.flow_length)
            elif isinstance(item, EndOfStream):
                break
        reply = (
            json.dumps(
                {
                    "hello": "from the meshnode demo upstream",
                    "method": headers.get(b":method", b"").decode(),
                    "path": headers.get(b":path", b"").decode(),
                    "x-request-id": headers.get(b"x-request-id", b"").decode(),
                    "x-forwarded-for": headers.get(b"x-forwarded-for", b"").decode(),
                    "x-meshnode-peer-identity": headers.get(
                        b"x-meshnode-peer-identity", b""
                    ).decode(),
                    "request_body_bytes": received,
                }
            ).encode()
            + b"\n"
        )
        await stream.send_headers(
            [
                (b":status", b"200"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(reply)).encode()),
            ]
        )
        await stream.send_data(reply, end_stream=True)
    except StreamReset:
        return


DEFAULT_ADDRESS = Address("127.0.0.1", 18080)
