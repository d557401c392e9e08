"""Bytes already read come back first, in pieces no larger than asked for."""

from __future__ import annotations

import trio.testing

from meshnode.net.replay import Replay


async def test_bytes_read_before_come_back_first() -> None:
    near, far = trio.testing.memory_stream_pair()
    replay = Replay(near, b"PRI * HTTP/2.0")
    await far.send_all(b" then the rest")
    assert await replay.receive_some(4) == b"PRI "
    assert await replay.receive_some() == b"* HTTP/2.0"
    assert await replay.receive_some() == b" then the rest"
    await replay.send_all(b"answer")
    assert await far.receive_some() == b"answer"
    await replay.send_eof()
    assert await far.receive_some() == b""
