"""Accept HTTP/2 connections (cleartext, or mTLS) and hand each request stream to a handler.

Every connection runs in its own nursery, inside a guard: whatever goes wrong
on one connection (a protocol error, a bug) ends that connection and is
logged, and the listener and every other connection carry on. With TLS, the
handshake must finish within ``handshake_timeout``, must have negotiated ALPN
``h2`` (Python does not enforce it) and the client certificate was verified
against the mesh CA; the peer's SPIFFE identity goes to the handler.

Accepting pauses while the listener holds ``max_connections`` connections or
the node is under memory pressure (``Overload``): waiting connections stay in
the kernel's backlog, where they cost this process nothing.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Awaitable, Callable

import attrs
import trio

from meshnode.net.h2.session import H2Session
from meshnode.net.http1.server import H1ServerSession
from meshnode.net.http1.translation import sniff
from meshnode.net.overload import Overload
from meshnode.net.request_tasks import RequestTasks
from meshnode.net.stream import Stream
from meshnode.net.tls import ALPN, peer_identity
from meshnode.net.violations import ConnectionRules
from meshnode.policy.units import Address

log = logging.getLogger(__name__)


@attrs.frozen
class Peer:
    ip: bytes
    identity: str | None = None  # the verified SPIFFE ID, on a TLS listener


RequestHandler = Callable[[Stream, Peer], Awaitable[None]]

# accept() failures that mean "out of something for now": wait and try again.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_RESOURCE_BACKOFF = 0.1
LISTEN_BACKLOG = 4096


class H2Listener:
    def __init__(
        self,
        name: str,
        handler: RequestHandler,
        *,
        tls: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = 10.0,
        rules: ConnectionRules | None = None,
        overload: Overload | None = None,
        http1: bool = False,
    ) -> None:
        """``tls`` gives the context for each new connection (rotation swaps what it returns).
        ``http1``: HTTP/1.1 callers too, told from HTTP/2 ones by the connection preface.

        ``rules`` may be swapped on reload; each connection keeps the rules it began with.
        """
        self.name = name
        self._handler = handler
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self.rules = rules if rules is not None else ConnectionRules(name)
        self.overload = overload if overload is not None else Overload()
        self._saturation = f"connections:{name}"
        self.connections = 0  # accepted and not yet closed, handshakes included
        self.sessions: set[H2Session | H1ServerSession] = set()
        self._http1 = http1
        self._accepting = trio.CancelScope()
        self._listeners: list[trio.SocketListener] = []
        self._idle = trio.Event()
        self._draining = False

    async def serve(
        self,
        address: Address,
        *,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address``; report the bound addresses (port 0 picks one) once ready.

        ``reuse_port``: share the port with other processes (SO_REUSEPORT), as
        ``serve --workers`` does; the kernel spreads connections among them.
        """
        if reuse_port:
            self._listeners = [await _shared_listener(address)]
        else:
            self._listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        bound = [Address(*listener.socket.getsockname()[:2]) for listener in self._listeners]
        async with trio.open_nursery() as connections:
            with self._accepting:
                task_status.started(bound)
                async with trio.open_nursery() as accepting:
                    for listener in self._listeners:
                        accepting.start_soon(self._accept_loop, listener, connections)
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

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            await self.overload.wait_for_room(self._saturation)
            try:
                transport = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                log.error("%s: accept failed: %s; retrying", self.name, exc.strerror)
                await trio.sleep(_RESOURCE_BACKOFF)
                continue
            self._count_connection(+1)
            nursery.start_soon(self._serve_connection, transport)

    def _count_connection(self, change: int) -> None:
        self.connections += change
        limit = self.rules.limits.max_connections
        self.overload.set(self._saturation, self.connections >= limit)

    async def _serve_connection(self, transport: trio.SocketStream) -> None:
        try:
            await self._serve_transport(transport)
        finally:
            self._count_connection(-1)

    async def _serve_transport(self, transport: trio.SocketStream) -> None:
        try:
            client_ip = transport.socket.getpeername()[0].encode()
        except OSError:
            await trio.aclose_forcefully(transport)
            return
        stream: trio.abc.Stream = transport
        identity = None
        if self._tls is not None:
            secured = await self._handshake(transport, client_ip)
            if secured is None:
                return
            stream, identity = secured, peer_identity(secured)
        protocol, received = "h2", b""
        if self._http1:
            sniffed = await sniff(stream, self.rules.limits.header_timeout)
            if sniffed is None:
                await trio.aclose_forcefully(stream)
                return
            protocol, received = sniffed
        peer = Peer(client_ip, identity)
        session: H2Session | H1ServerSession | None = None
        try:
            async with trio.open_nursery() as nursery:
                requests = RequestTasks(nursery, self._handler, peer)
                on_request = requests.submit
                if protocol == "http1":
                    session = H1ServerSession(
                        stream,
                        on_request=on_request,
                        rules=self.rules,
                        peer=client_ip.decode(),
                        received=received,
                    )
                else:
                    session = H2Session(
                        stream,
                        client_side=False,
                        on_request=on_request,
                        rules=self.rules,
                        peer=client_ip.decode(),
                        received=received,
                    )
                self.sessions.add(session)
                if self._draining:
                    session.close_gracefully()
                try:
                    await session.run()
                finally:
                    requests.close()
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
        kind = reason = ""
        try:
            with trio.fail_after(self._handshake_timeout):
                await secured.do_handshake()
            if secured.selected_alpn_protocol() != ALPN:
                kind = "alpn"
                reason = f"ALPN {secured.selected_alpn_protocol()!r} instead of {ALPN!r}"
        except trio.TooSlowError:
            kind = "handshake-timeout"
            reason = f"no TLS handshake within {self._handshake_timeout:g}s"
        except trio.BrokenResourceError as exc:
            kind, reason = "handshake-failed", f"TLS handshake failed: {exc.__cause__ or exc}"
        if not kind:
            return secured
        self.rules.violations.record(self.rules.where, kind, client_ip.decode(), reason)
        await trio.aclose_forcefully(secured)
        return None


async def _shared_listener(address: Address) -> trio.SocketListener:
    """A listening socket on a concrete ``address`` that other processes may bind too."""
    family = trio.socket.AF_INET6 if ":" in address.host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((address.host, address.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return trio.SocketListener(sock)
