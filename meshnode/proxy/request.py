"""One request as it crosses the node: what the request path's steps share, and what its
access-log record and metrics will say once it ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.net.listener import Peer
from meshnode.net.stream import Stream
from meshnode.policy.models import UpstreamPolicy
from meshnode.policy.units import Address
from meshnode.proxy.body import RequestBody
from meshnode.proxy.headers import HeaderList

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when [tracing] asks for it
    from meshnode.tracing.tracer import RequestTrace


# The fields ``read_head`` takes.
_HEAD_FIELDS = frozenset(
    (b":authority", b"host", b":path", b":method", b"content-type", b"grpc-timeout")
)


class Request:
    """One request as it goes. Its head fields are read once, by ``read_head``."""

    __slots__ = (
        "authority",
        "body",
        "client_ip",
        "endpoint",
        "error",
        "group",
        "grpc",
        "grpc_timeout",
        "head_at",
        "headers",
        "method",
        "out_headers",
        "path",
        "peer",
        "request_id",
        "started",
        "stream",
        "trace",
        "tries",
        "tunnel",
    )

    def __init__(self, stream: Stream, peer: Peer) -> None:
        self.stream = stream
        self.peer = peer
        self.client_ip = peer.ip
        self.started = trio.current_time()
        self.headers: HeaderList = stream.headers or []
        self.method = self.path = self.authority = b""
        self.out_headers: HeaderList = []
        self.request_id: bytes | None = None
        self.body: RequestBody | None = None
        self.group: UpstreamGroup | None = None
        self.endpoint: Address | None = None  # the last try's
        self.tries = 0
        self.tunnel = stream.tunnel  # a WebSocket: bytes both ways once it is up
        self.head_at: float | None = None  # when the response head arrived
        self.error: str | None = None  # the mesh error reason, or "fallback:<kind>"
        self.trace: RequestTrace | None = None  # with [tracing]: its span and propagation
        self.grpc = False  # a gRPC call (its content-type, or a grpc-timeout)
        self.grpc_timeout: float | None = None  # seconds: a gRPC caller's own deadline

    def read_head(self) -> None:
        """Take the method, path and authority (``host`` when there is no ``:authority``)."""
        authority = path = method = b""
        for name, value in self.headers:
            if name not in _HEAD_FIELDS:  # most fields: one test instead of five
                continue
            if name == b":authority" or (name == b"host" and not authority):
                authority = value
            elif name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                self.grpc = self.grpc or value.startswith(b"application/grpc")
            elif name == b"grpc-timeout":
                self.grpc, self.grpc_timeout = True, parse_grpc_timeout(value)
        self.method, self.path, self.authority = method, path, authority

    def header(self, wanted: bytes) -> bytes | None:
        """The first value of the header named ``wanted`` (lower case), if any."""
        return next((value for name, value in self.headers if name == wanted), None)

    def session_key(self, policy: UpstreamPolicy) -> bytes | None:
        """The caller's session-affinity key: the named header's value, or the named
        cookie's; None when the policy keeps no affinity or the request carries no key."""
        affinity = policy.balancer.session_affinity
        if affinity is None:
            return None
        if affinity.header is not None:
            return self.header(affinity.header.lower().encode())
        if affinity.cookie is not None:
            prefix = affinity.cookie.encode() + b"="
            for name, value in self.headers:
                if name == b"cookie":
                    for crumb in value.split(b";"):
                        stripped = crumb.strip()
                        if stripped.startswith(prefix):
                            return stripped[len(prefix) :]
        return None

    def describe(self) -> tuple[str, dict[str, object]]:
        """The request's span: its name, and what it says of the request (OpenTelemetry's
        HTTP server conventions, and the mesh's own facts under ``meshnode.``)."""
        path, _, query = self.path.partition(b"?")
        attributes: dict[str, object] = {
            "http.request.method": self.method.decode("latin-1"),
            "url.path": path.decode("latin-1"),
            "server.address": self.authority.decode("latin-1"),
            "client.address": self.client_ip.decode("latin-1"),
        }
        if query:
            attributes["url.query"] = query.decode("latin-1")
        if self.group is not None:
            attributes["meshnode.upstream"] = self.group.name
        if self.request_id is not None:
            attributes["meshnode.request_id"] = self.request_id.decode("latin-1")
        if self.peer.identity is not None:
            attributes["meshnode.peer.identity"] = self.peer.identity
        upstream = self.group.name if self.group is not None else "-"
        return f"{attributes['http.request.method']} {upstream}", attributes

    def outcome_time(self, end: float) -> float:
        """When the request's outcome was known: its ``end``, or for a tunnel its opening
        (a tunnel open for an hour is not a slow call)."""
        if self.tunnel and self.head_at is not None:
            return self.head_at
        return end


RequestObserver = Callable[[Request], None]

# gRPC's timeout units (the gRPC over HTTP/2 protocol): hours, minutes, seconds, milli-,
# micro- and nanoseconds; the value is at most eight digits.
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds a ``grpc-timeout`` value gives; None when it is not a valid one (ignored,
    as gRPC servers do)."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _GRPC_UNITS:
        return None
    return int(digits) * _GRPC_UNITS[unit]


def format_grpc_timeout(seconds: float) -> bytes:
    """``seconds`` as a ``grpc-timeout`` value, in milliseconds (whole seconds past what
    eight digits of them hold), never less than one."""
    millis = max(1, int(seconds * 1000))
    if millis <= 99_999_999:
        return b"%dm" % millis
    return b"%dS" % min(99_999_999, int(seconds))
