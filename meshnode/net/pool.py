"""Pooled, multiplexed HTTP/2 connections to upstream endpoints.

Each endpoint address has a few sessions; a request takes a stream on the first
one with room under the peer's ``max_concurrent_streams`` (as the peer last set it:
lowered mid-connection, even to 0, it is obeyed) and opens another connection only
when all are full. A new connection takes streams once the upstream's SETTINGS
arrived. Connecting is serialized per endpoint, so a burst of requests on a cold
pool opens one connection, not a hundred. A session that received GOAWAY stops
taking streams at once and leaves the pool when its last stream ends; one past
the upstream's per-connection request limit (set, or learned: ``_Endpoint.learn``)
is retired the same way before the upstream has to send one. What becomes of the
streams an upstream left unanswered is the request path's (``StreamReset.lifecycle``).
Each upstream's connections are pooled apart (``UpstreamConnections``), so that
each counts its own GOAWAYs. Sessions idle for longer than ``idle_timeout`` close
themselves with a GOAWAY (the session's own idle rule, shorter here than for
callers' connections).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from meshnode.errors import UpstreamConnectFailure
from meshnode.net.h2.framing import GoAwayReceived
from meshnode.net.h2.session import H2Session
from meshnode.net.http1.client import H1ClientConnection
from meshnode.net.stream import Headers, Stream
from meshnode.net.violations import ConnectionRules
from meshnode.policy.models import UpstreamSection
from meshnode.policy.units import Address, Duration

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 60.0
# Fewer requests per connection than this are not learned as an upstream's limit: a
# connection that short-lived is better left to GOAWAY and the resends.
MIN_LEARNED_STREAMS = 4
# New connections one request opens, each filled by others before it could take a stream.
NEW_CONNECTIONS_PER_STREAM = 3

# Opens a transport to an endpoint: cleartext when ``peer`` is None, else mTLS to a peer
# that must present that identity.
Connector = Callable[[Address, str | None], Awaitable[trio.abc.Stream]]


async def tcp_connector(address: Address, peer: str | None) -> trio.abc.Stream:
    if peer is not None:
        raise UpstreamConnectFailure(f"{address}: mTLS is not set up on this node ([tls])")
    return await trio.open_tcp_stream(address.host, address.port)


class GoAwayCounter:
    """The GOAWAYs an upstream's connections received, for its metrics; it also keys the
    upstream's own connections in the pool."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, goaway: GoAwayReceived) -> None:
        self.count += 1


@attrs.frozen
class UpstreamConnections:
    """How one upstream's connections are made and kept; each upstream's are pooled apart.

    ``peer``: the identity an endpoint must prove over mTLS (None: cleartext).
    ``protocol``: "h2", or "http1" (one request per connection at a time, kept alive for
    the next; the bulkhead's per-endpoint limit bounds how many are open).
    ``max_requests``: h2 connections are retired after this many streams (0: only once
    the upstream shows its own limit, ``_Endpoint.learn``).
    ``goaways``: counts the GOAWAYs they receive, for the upstream's metrics.
    """

    peer: str | None = None
    protocol: str = "h2"
    max_requests: int = 0
    goaways: GoAwayCounter = attrs.field(factory=GoAwayCounter)  # compared by identity


PLAIN_H2 = UpstreamConnections()  # for callers that are no upstream of the node's policies


@functools.lru_cache(maxsize=1024)
def upstream_connections(
    section: UpstreamSection, trust_domain: str, goaways: GoAwayCounter
) -> UpstreamConnections:
    """An upstream's connections as its ``[upstream]`` section sets them (one object for
    the same section, so that its requests, probes and deliveries share connections)."""
    return UpstreamConnections(
        section.identity(trust_domain),
        section.protocol,
        section.max_requests_per_connection,
        goaways,
    )


class _Connecting:
    """A new connection on its way, which every request that found no room waits for
    together: a lock would let them through one per scheduler round, and at a busy
    upstream's recycle the hundredth waited 80 ms for a connection open after 5."""

    __slots__ = ("done", "failure")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.failure: UpstreamConnectFailure | None = None


class _Endpoint:
    __slots__ = ("address", "connecting", "last_recycled", "sessions", "streams_per_connection")

    def __init__(self, address: Address, streams_per_connection: int) -> None:
        self.address = address
        self.sessions: list[H2Session] = []
        self.connecting: _Connecting | None = None
        # Streams a connection opens before it is retired: as configured, or lower once the
        # upstream showed its own limit (``learn``); 0: no limit.
        self.streams_per_connection = streams_per_connection
        self.last_recycled = 0  # the streams the last busy GOAWAY accepted (``learn``)

    def learn(self, session: H2Session) -> None:
        """Learn the upstream's per-connection request limit from a connection it recycled
        while busy, so that later connections are retired before it and it never has to.

        A server that ends each connection after N requests (nginx's ``keepalive_requests``
        and Hypercorn's ``keep_alive_max_requests``, 1,000 by default) sends GOAWAY as the
        last request arrives, while streams are in flight. nginx finishes the streams it
        accepted and refuses the rest, which are sent again; two such connections in a
        row that ended after about the same number (within a tenth) show the limit, and
        each connection then opens one fewer than the fewer of them. Hypercorn on h2 drops
        the answers of streams it accepted (python-hyper/h2#1181), and no proxy can save
        an answer whose head it already relayed: the first such connection teaches at
        once, as much as the upstream surely took (those it accepted, less those in flight
        then, any of which may have been past its limit). A limit is only ever lowered.
        """
        recycled = session.recycled_at
        if recycled is None:
            return
        accepted, in_flight = recycled
        if session.lost_after_goaway:
            limit = accepted - in_flight
        else:
            previous, self.last_recycled = self.last_recycled, accepted
            if abs(accepted - previous) > previous // 10:
                return
            limit = min(accepted, previous) - 1
        current = self.streams_per_connection
        if limit < MIN_LEARNED_STREAMS or (current and limit >= current):
            return
        log.info(
            "upstream %s recycled a connection after %d requests%s: its connections are "
            "retired after %d from now on",
            self.address,
            accepted,
            f", dropping {session.lost_after_goaway} it had accepted"
            if session.lost_after_goaway
            else "",
            limit,
        )
        self.streams_per_connection = limit
        for live in self.sessions:  # opened since: retired in time too
            live.retire_after(limit)

    def usable(self) -> H2Session | None:
        for session in self.sessions:
            if session.accepts_streams:
                return session
        return None


class UpstreamPool:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        connector: Connector = tcp_connector,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        rules: ConnectionRules | None = None,
    ) -> None:
        """``rules`` hold upstreams to the node's limits: a broken upstream is a hostile peer."""
        self._nursery = nursery
        self._connector = connector
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self.rules = rules if rules is not None else ConnectionRules("upstream")
        self._endpoints: dict[tuple[Address, UpstreamConnections], _Endpoint] = {}
        # HTTP/1.1 upstreams: idle keep-alive connections per endpoint (the last used first),
        # and every open one, to retire on close_all.
        self._idle_http1: dict[Address, list[H1ClientConnection]] = {}
        self._http1: set[H1ClientConnection] = set()

    async def open_stream(
        self,
        address: Address,
        headers: Headers,
        *,
        end_stream: bool,
        connections: UpstreamConnections = PLAIN_H2,
    ) -> Stream:
        """Send a request's headers to ``address``, connecting if no connection has room."""
        if connections.protocol == "http1":
            return await self._open_http1(address, headers, end_stream)
        key = (address, connections)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _Endpoint(address, connections.max_requests)
        session = endpoint.usable()
        if session is None:
            session = await self._connect(address, connections, endpoint)
        return session.open_stream(headers, end_stream=end_stream)

    def connections(self, address: Address, connections: UpstreamConnections = PLAIN_H2) -> int:
        endpoint = self._endpoints.get((address, connections))
        return 0 if endpoint is None else len(endpoint.sessions)

    def close_all(self) -> None:
        """Tell every upstream we are leaving; streams in flight still finish."""
        for endpoint in self._endpoints.values():
            for session in endpoint.sessions:
                session.close_gracefully()
        for connection in list(self._http1):
            connection.close()

    async def _open_http1(self, address: Address, headers: Headers, end_stream: bool) -> Stream:
        idle = self._idle_http1.setdefault(address, [])
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection.start(headers, end_stream=end_stream)
        transport = await self._open_transport(address, None)
        connection = H1ClientConnection(
            transport,
            rules=self._session_rules(),
            peer=str(address),
            idle_timeout=self._session_rules().limits.idle_timeout,
            on_idle=idle.append,
        )
        self._http1.add(connection)
        self._nursery.start_soon(self._run_http1, idle, connection)
        return connection.start(headers, end_stream=end_stream)

    async def _run_http1(
        self, idle: list[H1ClientConnection], connection: H1ClientConnection
    ) -> None:
        try:
            await connection.run()
        except Exception:
            log.exception("upstream connection to %s failed", connection.peer)
        finally:
            self._http1.discard(connection)
            if connection in idle:
                idle.remove(connection)

    async def _open_transport(self, address: Address, peer: str | None) -> trio.abc.Stream:
        try:
            with trio.fail_after(self._connect_timeout):
                return await self._connector(address, peer)
        except (OSError, trio.TooSlowError) as exc:
            raise UpstreamConnectFailure(f"cannot connect to {address}: {_reason(exc)}") from exc

    async def _connect(
        self, address: Address, connections: UpstreamConnections, endpoint: _Endpoint
    ) -> H2Session:
        """A session with room for a stream now: one with room already, or a new one once
        the upstream's SETTINGS said how many streams it takes (its limit may be below
        what HTTP/2 lets a client assume, and a burst past it would be refused). One
        request opens it while the others wait for it and share its outcome; those it had
        no room for open the next. A request opens a few at most (an upstream whose every
        connection takes no stream fails the request)."""
        opened = 0
        while opened < NEW_CONNECTIONS_PER_STREAM:
            connecting = endpoint.connecting
            if connecting is None:
                opened += 1
                await self._open_for(address, connections, endpoint)
            else:
                await connecting.done.wait()
                if connecting.failure is not None:
                    raise UpstreamConnectFailure(str(connecting.failure))
            session = endpoint.usable()
            if session is not None:
                return session
        raise UpstreamConnectFailure(f"new connections to {address} take no stream")

    async def _open_for(
        self, address: Address, connections: UpstreamConnections, endpoint: _Endpoint
    ) -> None:
        """Open the endpoint's next connection, telling those who wait for it how it went
        (a cancelled opener lets them try again themselves)."""
        connecting = endpoint.connecting = _Connecting()
        try:
            await self._new_session(address, connections, endpoint)
        except UpstreamConnectFailure as exc:
            connecting.failure = exc
            raise
        finally:
            endpoint.connecting = None
            connecting.done.set()

    async def _new_session(
        self, address: Address, connections: UpstreamConnections, endpoint: _Endpoint
    ) -> H2Session:
        """A new connection, once the upstream's SETTINGS arrived (within the connect
        timeout, again)."""
        transport = await self._open_transport(address, connections.peer)
        session = H2Session(
            transport, client_side=True, rules=self._session_rules(), peer=str(address)
        )
        session.on_goaway = connections.goaways
        if endpoint.streams_per_connection:
            session.retire_after(endpoint.streams_per_connection)
        await self._nursery.start(self._run_session, address, endpoint, session)
        with trio.move_on_after(self._connect_timeout):
            await session.peer_settings.wait()
        if not session.settings_received:
            why = "it closed the connection" if session.dead else "timed out"
            session.abort()
            raise UpstreamConnectFailure(f"{address} sent no HTTP/2 SETTINGS: {why}")
        return session

    def _session_rules(self) -> ConnectionRules:
        """The node's rules, with the pool's (shorter) idle timeout."""
        limits = self.rules.limits
        idle = Duration(min(self._idle_timeout, limits.idle_timeout))
        return attrs.evolve(self.rules, limits=attrs.evolve(limits, idle_timeout=idle))

    async def _run_session(
        self,
        address: Address,
        endpoint: _Endpoint,
        session: H2Session,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        endpoint.sessions.append(session)
        try:
            await session.run(task_status=task_status)
        except Exception:
            # A bug in one connection must not reach the pool's nursery (the whole node).
            log.exception("upstream connection to %s failed", address)
        finally:
            endpoint.sessions.remove(session)
            endpoint.learn(session)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "connect timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
