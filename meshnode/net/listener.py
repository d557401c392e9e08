"""Accept HTTP/2 connections and hand each request stream to a handler.

Every connection runs in its own nursery, inside a guard: whatever goes wrong
on one connection (a protocol error, a bug) ends that connection and is
logged, and the listener and every other connection carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from meshnode.net.session import H2Session, Stream
from meshnode.policy.units import Address

log = logging.getLogger(__name__)

RequestHandler = Callable[[Stream, bytes], Awaitable[None]]


class H2Listener:
    def __init__(self, name: str, handler: RequestHandler) -> None:
        self.name = name
        self._handler = handler
        self.sessions: set[H2Session] = set()
        self._accepting = trio.CancelScope()
        self._listeners: list[trio.SocketListener] = []
        self._idle = trio.Event()
        self._draining = False

    async def serve(
        self,
        address: Address,
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address``; report the bound addresses (port 0 picks one) once ready."""
        self._listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        bound = [Address(*listener.socket.getsockname()[:2]) for listener in self._listeners]
        async with trio.open_nursery() as connections:
            with self._accepting:
                task_status.started(bound)
                await trio.serve_listeners(
                    self._serve_connection, self._listeners, handler_nursery=connections
                )
            for listener in self._listeners:
                await listener.aclose()

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, GOAWAY every connection, wait for their streams; True if all finished."""
        self._draining = True
        self._accepting.cancel()
        for session in list(self.sessions):
            session.close_gracefully()
        with trio.move_on_after(timeout):
            while self.sessions:
                await self._idle.wait()
            return True
        for session in list(self.sessions):
            session.abort()
        return False

    async def _serve_connection(self, transport: trio.SocketStream) -> None:
        try:
            client_ip = transport.socket.getpeername()[0].encode()
        except OSError:
            return
        session: H2Session | None = None
        try:
            async with trio.open_nursery() as requests:
                session = H2Session(
                    transport,
                    client_side=False,
                    on_request=partial(_spawn, requests, self._handler, client_ip),
                )
                self.sessions.add(session)
                if self._draining:
                    session.close_gracefully()
                await session.run()
        except Exception:
            log.exception("%s connection from %s failed", self.name, client_ip.decode())
        finally:
            if session is not None:
                self.sessions.discard(session)
                if not self.sessions:
                    self._idle.set()
                    self._idle = trio.Event()


def _spawn(
    nursery: trio.Nursery, handler: RequestHandler, client_ip: bytes, stream: Stream
) -> None:
    nursery.start_soon(handler, stream, client_ip)
