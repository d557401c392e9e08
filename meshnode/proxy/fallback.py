"""Fallbacks (SPEC ``[fallback]``): what answers a request its upstream failed.

Four kinds: a static response, the stale cache (the last good answer to a GET), the
queue (the request is stored durably, answered 202, and replayed by the upstream's
replay actor, actors/replay.py), and another upstream (the request path runs again
against it, which the caller hands in as ``elsewhere``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import trio

from meshnode.actors.group import UpstreamGroup
from meshnode.actors.protections import CachedResponse
from meshnode.errors import MeshError, UpstreamFailed
from meshnode.events import QueueFilling
from meshnode.net.stream import Stream, StreamReset
from meshnode.policy.models import FallbackPolicy
from meshnode.proxy.headers import HeaderList
from meshnode.proxy.request import Request
from meshnode.resilience.core.lru import LRU
from meshnode.resilience.spool import AsyncSpool, SpoolError

log = logging.getLogger(__name__)

# A response larger than this is relayed but not cached for stale-cache fallbacks.
MAX_CACHED_BODY = 1024 * 1024


def applies(policy: FallbackPolicy, error: MeshError) -> bool:
    """Whether the fallback answers instead of ``error``: its reason is listed, or retries
    ran out and that is, or the upstream's answer had a status that is ("503", "5xx")."""
    if error.reason in policy.on or (error.retries_exhausted and "retries-exhausted" in policy.on):
        return True
    return isinstance(error, UpstreamFailed) and on_status(policy, error.status_seen)


def on_exhausted(policy: FallbackPolicy | None) -> bool:
    """Whether ``policy`` takes over once retries are exhausted."""
    return policy is not None and "retries-exhausted" in policy.on


def on_status(policy: FallbackPolicy | None, status: int) -> bool:
    """Whether ``policy`` takes over an answer with ``status`` ("503" or "5xx" listed)."""
    if policy is None:
        return False
    text = str(status)
    return text in policy.on or f"{text[0]}xx" in policy.on


Elsewhere = Callable[[str], Awaitable[bool]]
"""Serve the request from the named upstream; False when it cannot be."""


async def fall_back(
    request: Request,
    group: UpstreamGroup,
    plan: FallbackPolicy,
    error: MeshError,
    *,
    queue: AsyncSpool | None,
    elsewhere: Elsewhere,
) -> bool:
    """Answer instead of ``error`` as ``plan`` says; False when it does not apply or has
    nothing to give (the caller then gets the error)."""
    if not applies(plan, error):
        return False
    if plan.kind == "static":
        await answer_static(request.stream, plan)
    elif plan.kind == "stale-cache":
        cache = group.protections.stale_cache
        if cache is None or request.method != b"GET":
            return False
        if not await answer_stale(request.stream, cache, request.path, plan.age_limit):
            return False
    elif plan.kind == "queue":
        if queue is None or not await enqueue(queue, request, group, plan):
            return False
    elif not await elsewhere(plan.upstream or ""):
        return False
    log.info("fallback %s for %s (%s): %s", plan.kind, group.name, error.reason, error.detail)
    group.stats.count_fallback(plan.kind)
    return True


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


async def enqueue(
    queue: AsyncSpool, request: Request, group: UpstreamGroup, plan: FallbackPolicy
) -> bool:
    """Store the request durably and answer 202; False when it may not or cannot be queued."""
    method = request.method.decode("latin-1")
    path = request.path.decode("latin-1")
    if method not in plan.methods or (plan.paths and not path.startswith(tuple(plan.paths))):
        return False
    body = b"" if request.body is None else await request.body.read_all(plan.max_body)
    if body is None:
        return False
    key = request.header(b"idempotency-key")
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.out_headers
        if not name.startswith(b":") and name != b"idempotency-key"
    ]
    try:
        entry_id, stored_key, depth = await queue.run(
            queue.spool.enqueue,
            group.name,
            method,
            path,
            headers,
            body,
            idempotency_key=None if key is None else key.decode("latin-1"),
            max_depth=plan.max_depth,
            max_bytes=plan.max_bytes,
        )
    except SpoolError as exc:
        group.stats.queue["refused"] += 1
        log.warning("queue fallback of %s refused a request: %s", group.name, exc)
        return False
    group.stats.queue["queued"] += 1
    if depth == 1:
        group.bus.publish(QueueFilling(upstream=group.name, id=entry_id))
    answer = json.dumps(
        {"status": "queued", "id": entry_id, "idempotency_key": stored_key}
    ).encode()
    await _send(
        request.stream,
        [
            (b":status", b"202"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
            (b"idempotency-key", stored_key.encode()),
            fallback_header("queue"),
        ],
        answer,
    )  # a caller gone by now: stored all the same, it will be delivered
    return True
