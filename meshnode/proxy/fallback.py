"""Fallback answers (SPEC ``[fallback]``): static responses and the stale cache.

The ``upstream`` kind re-runs the request path against another upstream and
lives in forward.py; what is here needs no I/O but the client stream.
"""

from __future__ import annotations

import trio

from meshnode.actors.protections import CachedResponse
from meshnode.errors import MeshError, UpstreamFailed
from meshnode.net.stream import Stream, StreamReset
from meshnode.policy.models import FallbackPolicy
from meshnode.proxy.headers import HeaderList
from meshnode.resilience.core.lru import LRU

# A response larger than this is relayed but not cached for stale-cache fallbacks.
MAX_CACHED_BODY = 1024 * 1024


def applies(policy: FallbackPolicy, error: MeshError) -> bool:
    """Whether the fallback answers instead of ``error``: its reason is listed, or retries
    ran out and that is, or the upstream's answer had a status that is ("503", "5xx")."""
    if error.reason in policy.on or (error.retries_exhausted and "retries-exhausted" in policy.on):
        return True
    return isinstance(error, UpstreamFailed) and on_status(policy, error.status_seen)


def on_status(policy: FallbackPolicy | None, status: int) -> bool:
    """Whether ``policy`` takes over an answer with ``status`` ("503" or "5xx" listed)."""
    if policy is None:
        return False
    text = str(status)
    return text in policy.on or f"{text[0]}xx" in policy.on


def fallback_header(kind: str) -> tuple[bytes, bytes]:
    return (b"x-meshnode-fallback", kind.encode())


async def answer_static(stream: Stream, policy: FallbackPolicy) -> None:
    body = policy.body.encode()
    headers: HeaderList = [(b":status", str(policy.status).encode())]
    headers.extend(
        (name.lower().encode(), value.encode()) for name, value in policy.headers.items()
    )
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append(fallback_header("static"))
    await _send(stream, headers, body)


async def answer_stale(
    stream: Stream, cache: LRU[bytes, CachedResponse], key: bytes, max_age: float
) -> bool:
    """Serve the cached answer for ``key`` if it is young enough; False if there is none."""
    cached = cache.get(key)
    if cached is None:
        return False
    age = trio.current_time() - cached.stored_at
    if age > max_age:
        cache.pop(key)
        return False
    headers = [*cached.headers, (b"age", str(int(age)).encode()), fallback_header("stale-cache")]
    await _send(stream, headers, cached.body)
    return True


class BodyCapture:
    """Collects a response body as it is relayed, giving up past ``MAX_CACHED_BODY``."""

    __slots__ = ("chunks", "overflow", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def __call__(self, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > MAX_CACHED_BODY:
            self.overflow = True
            self.chunks.clear()
        else:
            self.chunks.append(data)


async def _send(stream: Stream, headers: HeaderList, body: bytes) -> None:
    try:
        await stream.send_headers(headers, end_stream=not body)
        if body:
            await stream.send_data(body, end_stream=True)
    except StreamReset:
        return
