"""HTTP/2 upstreams at the far end of in-memory streams, for unit tests of the pool and
the request path under a mock clock.

They run meshnode's own H2Session, so they hide nothing about the proxy's logic but
can hide protocol bugs: what an upstream server does on the wire is tested against
real servers in their own processes (tests/integration/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from meshnode.net.h2.session import H2Session
from meshnode.net.stream import Stream
from meshnode.net.violations import ConnectionRules
from meshnode.policy.models import Limits
from meshnode.policy.units import Address

Answer = Callable[[Address, Stream], Awaitable[None]]


class MemoryUpstream:
    """One server session per connection the pool makes (``connect`` is its connector).

    Every request stream is kept in ``requests`` (with the address it was sent to in
    ``addresses``); when ``answer`` is given, a task runs it for each request.
    """

    def __init__(
        self, nursery: trio.Nursery, max_streams: int = 100, answer: Answer | None = None
    ) -> None:
        self.nursery = nursery
        self.max_streams = max_streams
        self.answer = answer
        self.sessions: list[H2Session] = []
        self.requests: list[Stream] = []
        self.addresses: list[Address] = []

    async def connect(self, address: Address, peer: str | None) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()

        def arrived(stream: Stream) -> None:
            self.requests.append(stream)
            self.addresses.append(address)
            if self.answer is not None:
                self.nursery.start_soon(self.answer, address, stream)

        session = H2Session(
            server_end,
            client_side=False,
            on_request=arrived,
            rules=ConnectionRules("test", Limits(max_concurrent_streams=self.max_streams)),
        )
        self.sessions.append(session)
        await self.nursery.start(session.run)
        return client_end

    async def answer_all(self) -> None:
        while self.requests:
            await self.requests.pop().send_headers([(b":status", b"204")], end_stream=True)
