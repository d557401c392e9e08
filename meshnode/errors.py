"""The errors a request can end in, each knowing what the node answers for it.

SPEC section 5: every response the node makes itself carries
``x-meshnode-error: <reason>`` and a JSON body naming the reason and upstream.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

# Says why a retry the policy allowed was not made ("deadline": it could not finish in time).
RETRY_SKIPPED = b"x-meshnode-retry-skipped"


class MeshError(Exception):
    """A request the node answers itself instead of the upstream."""

    reason: ClassVar[str]
    status: int  # a class default; an instance may carry its own (chaos-abort)

    def __init__(self, detail: str, upstream: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream = upstream
        self.request_id: bytes | None = None  # echoed, so a caller can find the request in logs
        self.retries_exhausted = False  # retries were allowed, and none is left
        self.retry_skipped: str | None = None  # why a retry the policy allowed was not made

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return []

    def response(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The answer the node makes (SPEC section 5): headers in HTTP/2 form, JSON body."""
        body = json.dumps(
            {"error": self.reason, "upstream": self.upstream, "detail": self.detail}
        ).encode()
        headers = [
            (b":status", str(self.status).encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-meshnode-error", self.reason.encode()),
        ]
        if self.request_id:
            headers.append((b"x-request-id", self.request_id))
        if self.retry_skipped:
            headers.append((RETRY_SKIPPED, self.retry_skipped.encode()))
        headers.extend(self.extra_headers())
        return headers, body


class TunnelLimit(MeshError):
    """A WebSocket tunnel reached ``tunnel_idle`` or ``tunnel_lifetime``: it is closed (its
    answer went out long ago, so nobody sees this status; logs and the access log do)."""

    reason = "tunnel-limit"
    status = 504


class NoRoute(MeshError):
    reason = "no-route"
    status = 404


class Forbidden(MeshError):
    """The caller's verified identity is not in the inbound listener's ``allow`` list."""

    reason = "forbidden"
    status = 403


class NoHealthyEndpoints(MeshError):
    reason = "no-healthy-endpoints"
    status = 503


class CircuitOpen(MeshError):
    reason = "circuit-open"
    status = 503


class BulkheadFull(MeshError):
    reason = "bulkhead-full"
    status = 503


class ConcurrencyLimited(MeshError):
    """The upstream's adaptive concurrency limit was reached (``[concurrency_limit]``)."""

    reason = "concurrency-limited"
    status = 503


class UpstreamConnectFailure(MeshError):
    reason = "upstream-connect-failure"
    status = 503


class UpstreamReset(MeshError):
    reason = "upstream-reset"
    status = 502


class UpstreamFailed(MeshError):
    """The upstream's own answer was a failure (a retryable status) and no retry is left.

    Raised instead of relaying that answer only when a fallback is configured
    for ``retries-exhausted``; it is answered only if the fallback has nothing.
    """

    reason = "retries-exhausted"
    status = 503

    def __init__(self, detail: str, upstream: str | None = None) -> None:
        super().__init__(detail, upstream)
        self.status_seen = 0  # what the upstream answered


class Timeout(MeshError):
    reason = "timeout"
    status = 504


class RateLimited(MeshError):
    reason = "rate-limited"
    status = 429

    def __init__(self, detail: str, upstream: str | None, retry_after: float) -> None:
        super().__init__(detail, upstream)
        self.retry_after = retry_after

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]


class ChaosAbort(MeshError):
    reason = "chaos-abort"
    status = 503

    def __init__(self, detail: str, upstream: str | None, status: int) -> None:
        super().__init__(detail, upstream)
        self.status = status


class RequestTooLarge(MeshError):
    """The body declared by content-length is over ``[limits] max_request_body``."""

    reason = "request-too-large"
    status = 413


class HeadersTooLarge(MeshError):
    """More header fields than ``[limits] max_header_count``."""

    reason = "headers-too-large"
    status = 431


class Overloaded(MeshError):
    """New work is shed while the node is over ``[limits] overload_memory``."""

    reason = "overloaded"
    status = 503


class BadRequest(MeshError):
    """A request the node cannot forward as it is (missing pseudo-headers and the like)."""

    reason = "bad-request"
    status = 400
