"""Fuzz target (atheris): any bytes from a peer, through the frame gate, meshnode's
HTTP/2 codec and the request checks of a server session, must end in a served or
refused stream, a GOAWAY or a closed connection, never an exception out of the session.

Run by ``./dev fuzz [seconds]`` (``.ci/run`` gives it 20 s); the inputs start from
seeds that reach the header path (a request, a request with a body, a bad request).
Each input runs on a fresh session under a virtual clock, so timeouts fire at once.
"""

from __future__ import annotations

import atheris
from harness import main, runner

with atheris.instrument_imports():
    import hpack
    from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, SettingsFrame

    from meshnode.net.h2.framing import CLIENT_PREFACE
    from meshnode.net.h2.session import H2Session
    from meshnode.net.stream import Data, EndOfStream, Stream, StreamReset
    from meshnode.net.violations import ConnectionRules

RULES = ConnectionRules("fuzz")
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"api")]


async def answer(stream: Stream) -> None:
    try:
        if stream.malformed is not None:
            stream.reset()
            return
        while not isinstance(item := await stream.receive(), EndOfStream):
            if isinstance(item, Data):
                stream.ack(item.flow_length)
        await stream.send_headers([(b":status", b"200")])
        await stream.send_data(b"ok", end_stream=True)
    except StreamReset:
        return


test_one_input = runner(
    lambda transport, on_request: H2Session(
        transport, client_side=False, on_request=on_request, rules=RULES
    ),
    answer,
    prefix=CLIENT_PREFACE,
)


def seeds() -> list[bytes]:
    encoder = hpack.Encoder()
    settings = bytes(SettingsFrame(0).serialize()) + bytes(
        SettingsFrame(0, flags=["ACK"]).serialize()
    )
    get = HeadersFrame(1, data=encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"])
    post = HeadersFrame(
        3, data=encoder.encode([(b":method", b"POST"), *GET[1:]]), flags=["END_HEADERS"]
    )
    body = DataFrame(3, data=b"hello", flags=["END_STREAM"])
    bad = HeadersFrame(
        5, data=encoder.encode([*GET, (b"x_a", b"1")]), flags=["END_HEADERS", "END_STREAM"]
    )
    ping = PingFrame(0, opaque_data=b"12345678")
    frames = [get, post, body, bad, ping]
    return [
        settings + b"".join(bytes(frame.serialize()) for frame in frames[:n]) for n in range(1, 6)
    ]


if __name__ == "__main__":
    main(test_one_input, seeds())
