"""Fuzz target (atheris): any bytes from an HTTP/1.1 caller, through h11, the smuggling
checks, pipelining, Expect: 100-continue and WebSocket upgrades of a server session, must
end in answered or refused requests and a closed connection, never an exception out of the
session.

Run by ``./dev fuzz [seconds]`` after the HTTP/2 target; the inputs start from seeds that
reach each path. Each input runs on a fresh session under a virtual clock.
"""

from __future__ import annotations

import atheris
from harness import main, runner

with atheris.instrument_imports():
    from meshnode.net.http1.server import H1ServerSession
    from meshnode.net.stream import Data, EndOfStream, Stream, StreamReset, Trailers
    from meshnode.net.violations import ConnectionRules

RULES = ConnectionRules("fuzz")
SEEDS = [
    b"GET / HTTP/1.1\r\nHost: api\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"GET /1 HTTP/1.1\r\nHost: api\r\n\r\n"
    b"GET /2 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    b"GET /chat HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    b"\x81\x82\x00\x00\x00\x00hi",
    b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"GET http://api/x HTTP/1.1\r\nHost: api\r\nX: a\r\n b\r\n\r\n",
]


async def answer(stream: Stream) -> None:
    """What the request path does with a stream, in short: refuse it, or read it and answer
    (a tunnel gets its 200 and an echo of what it sends)."""
    try:
        if stream.malformed is not None:
            await stream.send_headers(
                [(b":status", b"400"), (b"content-length", b"0")], end_stream=True
            )
            return
        if stream.tunnel:
            await stream.send_headers([(b":status", b"200")])
        while True:
            item = await stream.receive()
            if isinstance(item, Data):
                stream.ack(item.flow_length)
                if stream.tunnel:
                    await stream.send_data(item.data)
            elif isinstance(item, EndOfStream | Trailers):
                break
        if not stream.tunnel:
            await stream.send_headers([(b":status", b"200")])
            await stream.send_data(b"ok")
        await stream.send_headers([(b"x-done", b"1")], end_stream=True)
    except StreamReset:
        return


test_one_input = runner(
    lambda transport, on_request: H1ServerSession(transport, on_request=on_request, rules=RULES),
    answer,
)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
