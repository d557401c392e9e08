"""Active health probes: HTTP/2 GET, TCP connect, and the gRPC health-checking protocol.

Probes go through the node's upstream pool, so a ``tls = "mesh"`` upstream is
probed over mTLS with the same identity checks as its traffic. A probe answers
``(healthy, reason)`` and never raises: every failure is a reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from meshnode.errors import MeshError
from meshnode.net.pool import UpstreamConnections, UpstreamPool
from meshnode.net.stream import CANCEL, ResponseHead, Stream, StreamReset
from meshnode.policy.models import HealthCheckPolicy, UpstreamPolicy
from meshnode.policy.units import Address

ProbeResult = tuple[bool, str]
Probe = Callable[[UpstreamPolicy, Address], Awaitable[ProbeResult]]

GRPC_HEALTH_PATH = b"/grpc.health.v1.Health/Check"
GRPC_SERVING = 1


class Prober:
    def __init__(
        self, pool: UpstreamPool, connections: Callable[[UpstreamPolicy], UpstreamConnections]
    ) -> None:
        """``connections``: how an upstream's connections are made (its requests')."""
        self._pool = pool
        self._connections = connections

    async def __call__(self, policy: UpstreamPolicy, address: Address) -> ProbeResult:
        check = policy.health_check
        if check is None:
            return True, "not checked"
        with trio.move_on_after(check.timeout):
            try:
                if check.kind == "tcp":
                    stream = await trio.open_tcp_stream(address.host, address.port)
                    await stream.aclose()
                    return True, "connected"
                return await self._over_h2(policy, check, address)
            except (OSError, MeshError, StreamReset) as exc:
                return False, f"{type(exc).__name__}: {exc}"
        return False, f"no answer within {check.timeout:g}s"

    async def _over_h2(
        self, policy: UpstreamPolicy, check: HealthCheckPolicy, address: Address
    ) -> ProbeResult:
        grpc = check.kind == "grpc"
        headers = [
            (b":method", b"POST" if grpc else b"GET"),
            (b":path", GRPC_HEALTH_PATH if grpc else check.path.encode()),
            (b":scheme", b"http"),
            (b":authority", policy.name.encode()),
            (b"user-agent", b"meshnode-health-check"),
        ]
        if grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        stream = await self._pool.open_stream(
            address,
            headers,
            end_stream=not grpc,
            connections=self._connections(policy),
        )
        try:
            if grpc:
                service = check.grpc_service.encode()
                message = b"\x0a" + bytes([len(service)]) + service if service else b""
                await stream.send_data(
                    b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True
                )
                return await _grpc_answer(stream)
            head = await stream.receive()
            status = head.status if isinstance(head, ResponseHead) else 0
            low, high = check.expected_status
            if low <= status <= high:
                return True, f"status {status}"
            return False, f"status {status}, expected {low}-{high}"
        finally:
            stream.reset(CANCEL)


async def _grpc_answer(stream: Stream) -> ProbeResult:
    """grpc-status from the trailers (or a trailers-only head) and SERVING from the body."""
    head = await stream.receive()
    if not isinstance(head, ResponseHead):
        return False, "no response head"
    fields = dict(head.headers)
    body = b""
    if b"grpc-status" not in fields:
        body, trailers = await stream.read_rest(keep=64)
        fields = dict(trailers or [])
    code = fields.get(b"grpc-status")
    if code is None:
        return False, "no grpc-status"
    if code != b"0":
        return False, f"grpc-status {code.decode()}"
    serving = len(body) >= 7 and body[5:7] == bytes([0x08, GRPC_SERVING])
    return (True, "SERVING") if serving else (False, "not SERVING")
