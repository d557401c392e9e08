"""The errors a request can end in, each knowing what the node answers for it.

SPEC section 5: every response the node makes itself carries
``x-meshnode-error: <reason>`` and a JSON body naming the reason and upstream.
"""

from __future__ import annotations

from typing import ClassVar


class MeshError(Exception):
    """A request the node answers itself instead of the upstream."""

    reason: ClassVar[str]
    status: ClassVar[int]

    def __init__(self, detail: str, upstream: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.upstream = upstream
        self.request_id: bytes | None = None  # echoed, so a caller can find the request in logs


class NoRoute(MeshError):
    reason = "no-route"
    status = 404


class NoHealthyEndpoints(MeshError):
    reason = "no-healthy-endpoints"
    status = 503


class UpstreamConnectFailure(MeshError):
    reason = "upstream-connect-failure"
    status = 503


class UpstreamReset(MeshError):
    reason = "upstream-reset"
    status = 502


class Timeout(MeshError):
    reason = "timeout"
    status = 504


class BadRequest(MeshError):
    """A request the node cannot forward as it is (missing pseudo-headers and the like)."""

    reason = "bad-request"
    status = 400
