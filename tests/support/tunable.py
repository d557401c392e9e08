"""An HTTP/2 upstream whose latency and answers a test can change while it runs.

Built on meshnode's own listener: the component under test is the balancing
around it, and this server only needs to be slow, fail or recover on cue.
"""

from __future__ import annotations

import trio

from meshnode.net.listener import H2Listener, Peer
from meshnode.net.stream import Data, EndOfStream, Stream, StreamReset
from meshnode.policy.units import Address


class TunableUpstream:
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.address = Address(host, port)
        self.delay = 0.0
        self.status = 200
        self.health_status = 200
        self.requests = 0
        self.health_checks = 0
        self.received: list[tuple[str, bytes]] = []  # (idempotency key, body) of each request

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listener = H2Listener(self.name, self._answer)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(listener.serve, self.address)
            task_status.started(str(bound[0]))

    async def _answer(self, stream: Stream, peer: Peer) -> None:
        fields = dict(stream.headers or [])
        path = fields.get(b":path", b"/")
        body = b""
        try:
            while not isinstance(item := await stream.receive(), EndOfStream):
                if isinstance(item, Data):
                    body += item.data
                    stream.ack(item.flow_length)
            if path == b"/health":
                self.health_checks += 1
                status = self.health_status
            else:
                self.requests += 1
                self.received.append((fields.get(b"idempotency-key", b"").decode(), body))
                await trio.sleep(self.delay)
                status = self.status
            body = self.name.encode()
            await stream.send_headers(
                [(b":status", str(status).encode()), (b"content-length", str(len(body)).encode())]
            )
            await stream.send_data(body, end_stream=True)
        except StreamReset:
            return
