"""Where a mesh call goes: into this process's own request path, or to the local node.

Both hand the client a ``Stream`` to send the request body on and read the
response from, so everything above them is one code path.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
import trio

from meshnode.client.response import MeshUnavailable
from meshnode.engine import Engine
from meshnode.errors import UpstreamConnectFailure
from meshnode.events import EventBus
from meshnode.net.listener import Peer
from meshnode.net.local import LocalExchange
from meshnode.net.pool import UpstreamPool
from meshnode.net.stream import Headers, Stream
from meshnode.policy import Address, PolicySet, load_policies
from meshnode.reload import Reloader, ReloadResult, watch_directory

TLS_POLL_INTERVAL = 1.0  # seconds between looks at the certificate files
# The caller as the request path sees it: this process, on this host.
IN_PROCESS = Peer(b"127.0.0.1")


class Transport(Protocol):
    mode: str

    async def open(self, headers: Headers, *, end_stream: bool) -> Stream:
        """Start a request; the returned stream is the caller's end of it."""

    async def reports(self) -> dict[str, dict[str, Any]]:
        """``/admin/upstreams``' report of every upstream, by name."""

    async def settle(self, stream: Stream) -> None:
        """Wait until the call on ``stream`` is recorded where ``reports`` reads."""

    def close(self) -> None:
        """Say goodbye to the connections (GOAWAY); calls in flight may finish."""


class Embedded:
    """The upstream groups, pool and request path of a node, run in this process from the
    same policy files (reloaded when they change), talking to the upstreams directly."""

    mode = "embedded"

    def __init__(self, name: str, policies: PolicySet, nursery: trio.Nursery) -> None:
        self.bus = EventBus()
        # The queue fallback's database is the client's own: the host's node has one too.
        queue_name = f"queue-client-{name}.db"
        # TLSMaterialError on bad [tls] material, every problem listed.
        self.engine = Engine(policies, self.bus, queue_name=queue_name)
        self.reloader = Reloader(policies, self.engine.apply, self.bus, time.time)
        self._nursery = nursery

    @classmethod
    async def start(
        cls, name: str, directory: Path, nursery: trio.Nursery, *, watch: bool
    ) -> Embedded:
        """``PolicyError`` lists every problem of a bad policy directory."""
        policies = await trio.to_thread.run_sync(load_policies, directory)
        embedded = cls(name, policies, nursery)
        await embedded.engine.start(nursery)
        nursery.start_soon(embedded.engine.watch_tls, TLS_POLL_INTERVAL)
        if watch:
            nursery.start_soon(
                functools.partial(
                    watch_directory,
                    directory,
                    functools.partial(embedded.reloader.reload, "file-change"),
                    baseline=policies.fingerprint,
                )
            )
        return embedded

    async def open(self, headers: Headers, *, end_stream: bool) -> Stream:
        limits = self.reloader.current.node.limits
        exchange = LocalExchange(headers, end_stream=end_stream, limits=limits)
        # In the client's nursery, not the caller's: a cancelled call resets its stream and
        # the request path finishes (and counts) it, as it does for a network caller.
        self._nursery.start_soon(self._serve, exchange)
        return exchange.client

    async def _serve(self, exchange: LocalExchange) -> None:
        try:
            await self.engine.proxy.handle(exchange.server, IN_PROCESS)
        finally:
            exchange.served.set()

    async def settle(self, stream: Stream) -> None:
        if isinstance(stream.session, LocalExchange):
            await stream.session.served.wait()

    async def reports(self) -> dict[str, dict[str, Any]]:
        return {name: group.report() for name, group in self.engine.groups.items()}

    async def reload(self) -> ReloadResult:
        return await self.reloader.reload("client")

    def close(self) -> None:
        self.engine.close()


class Sidecar:
    """The local meshnode's outbound listener does the work; its admin API tells the figures."""

    mode = "sidecar"

    def __init__(self, address: Address, admin: str, nursery: trio.Nursery) -> None:
        self._address = address
        self._admin = admin.rstrip("/")
        self._pool = UpstreamPool(nursery)

    async def open(self, headers: Headers, *, end_stream: bool) -> Stream:
        try:
            return await self._pool.open_stream(self._address, headers, end_stream=end_stream)
        except UpstreamConnectFailure as exc:
            raise MeshUnavailable(f"the local meshnode at {self._address}: {exc}") from exc

    async def reports(self) -> dict[str, dict[str, Any]]:
        try:
            async with httpx.AsyncClient(timeout=5.0) as admin:
                answer = await admin.get(f"{self._admin}/admin/upstreams")
                answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise MeshUnavailable(
                f"the local meshnode's admin API at {self._admin}: {exc}"
            ) from exc
        upstreams: dict[str, dict[str, Any]] = answer.json()["upstreams"]
        return upstreams

    async def settle(self, stream: Stream) -> None:
        """The node records a call as it ends it; nothing to wait for here."""

    def close(self) -> None:
        self._pool.close_all()
