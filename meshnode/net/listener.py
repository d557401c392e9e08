"""Accept HTTP/2 connections (cleartext, or mTLS) and hand each request stream to a handler.

Every connection runs in its own nursery, inside a guard: whatever goes wrong
on one connection (a protocol error, a bug) ends that connection and is
logged, and the listener and every other connection carry on. With TLS, the
handshake must finish within ``handshake_timeout``, must have negotiated ALPN
``h2`` (Python does not enforce it) and the client certificate was verified
against the mesh CA; the peer's SPIFFE identity goes to the handler.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio

from meshnode.net.session import H2Session, Stream
from meshnode.net.tls import ALPN, peer_identity
from meshnode.policy.units import Address

log = logging.getLogger(__name__)


@attrs.frozen
class Peer:
    ip: bytes
    identity: str | None = None  # the verified SPIFFE ID, on a TLS listener


RequestHandler = Callable[[Stream, Peer], Awaitable[None]]


class H2Listener:
    def __init__(
        self,
        name: str,
        handler: RequestHandler,
        *,
        tls: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        """``tls`` gives the context for each new connection (rotation swaps what it returns)."""
        self.name = name
        self._handler = handler
        self._tls = tls
        self._handshake_timeout = handshake_timeout
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
        cut = sum(len(session.streams) for session in self.sessions)
        log.warning("%s: drain timeout: resetting %d stream(s) still open", self.name, cut)
        for session in list(self.sessions):
            session.abort()
        return False

    async def _serve_connection(self, transport: trio.SocketStream) -> None:
        try:
            client_ip = transport.socket.getpeername()[0].encode()
        except OSError:
            return
        stream: trio.abc.Stream = transport
        identity = None
        if self._tls is not None:
            secured = await self._handshake(transport, client_ip)
            if secured is None:
                return
            stream, identity = secured, peer_identity(secured)
        peer = Peer(client_ip, identity)
        session: H2Session | None = None
        try:
            async with trio.open_nursery() as requests:
                session = H2Session(
                    stream,
                    client_side=False,
                    on_request=partial(_spawn, requests, self._handler, peer),
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

    async def _handshake(
        self, transport: trio.SocketStream, client_ip: bytes
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS handshake, bounded in time; None (connection closed) if it is not acceptable."""
        assert self._tls is not None
        secured = trio.SSLStream(transport, self._tls(), server_side=True)
        reason = None
        try:
            with trio.fail_after(self._handshake_timeout):
                await secured.do_handshake()
            if secured.selected_alpn_protocol() != ALPN:
                reason = f"ALPN {secured.selected_alpn_protocol()!r} instead of {ALPN!r}"
        except trio.TooSlowError:
            reason = f"no TLS handshake within {self._handshake_timeout:g}s"
        except trio.BrokenResourceError as exc:
            reason = f"TLS handshake failed: {exc.__cause__ or exc}"
        if reason is None:
            return secured
        log.info("%s: refused %s: %s", self.name, client_ip.decode(), reason)
        await trio.aclose_forcefully(secured)
        return None


def _spawn(nursery: trio.Nursery, handler: RequestHandler, peer: Peer, stream: Stream) -> None:
    nursery.start_soon(handler, stream, peer)
