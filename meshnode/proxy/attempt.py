"""One try of a request against one endpoint.

A try ends in one of three ways: it relays a response to the client (and
returns its status); it fails before anything reached the client, raising
``AttemptFailed`` with the condition a retry policy would name
(``connect-failure``, ``refused-stream``, ``reset``, ``timeout``, or the
status the ``judge`` refused to relay); or the upstream breaks mid-body, which
raises ``StreamReset`` (the client's stream is reset, never truncated). The
per-try timeout bounds the wait for the response head: once a head has been
relayed a retry is impossible, and the request timeout bounds the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import trio

from meshnode.errors import MeshError, Timeout, UpstreamConnectFailure, UpstreamReset
from meshnode.net.pool import UpstreamPool
from meshnode.net.session import CANCEL, ResponseHead, Stream, StreamReset
from meshnode.policy.models import Endpoint
from meshnode.proxy.body import RequestBody
from meshnode.proxy.headers import HeaderList, strip_hop_by_hop
from meshnode.proxy.relay import relay_body

Judge = Callable[[int, HeaderList], None]


class AttemptFailed(Exception):
    """A try that failed before anything reached the client: the request may be retried."""

    def __init__(
        self,
        condition: str,
        error: MeshError,
        *,
        headers: HeaderList | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(condition)
        self.condition = condition
        self.error = error
        self.headers = headers or []
        self.retry_delay = retry_delay  # decided already (by the judge), else None


async def attempt(
    pool: UpstreamPool,
    endpoint: Endpoint,
    headers: HeaderList,
    body: RequestBody | None,
    client: Stream,
    *,
    per_try: float = math.inf,
    judge: Judge | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    tap: Callable[[bytes], None] | None = None,
) -> tuple[int, HeaderList]:
    """Send the request to ``endpoint`` and relay the answer; return its status and head."""
    upstream: Stream | None = None
    failure: BaseException | None = None
    status, head_headers = 0, []
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(per_try) as try_scope:
                    try:
                        upstream = await pool.open_stream(
                            endpoint.address, headers, end_stream=body is None
                        )
                    except UpstreamConnectFailure as error:
                        raise AttemptFailed("connect-failure", error) from error
                    if body is not None:
                        nursery.start_soon(_upload, body, upstream)
                    head = await _receive_head(upstream)
                if try_scope.cancelled_caught:
                    raise AttemptFailed(
                        "timeout", Timeout(f"no response head within the per-try {per_try:g}s")
                    )
                head_headers = head.headers
                status = status_of(head_headers)
                if judge is not None:
                    judge(status, head_headers)
                assert upstream is not None
                no_body = upstream.consume_end()
                out = strip_hop_by_hop(head_headers)
                out.extend(extra_headers)
                await client.send_headers(out, end_stream=no_body)
                if not no_body:
                    await relay_body(upstream, client, tap)
            except (AttemptFailed, StreamReset, MeshError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
    finally:
        if upstream is not None:
            upstream.reset(CANCEL)
    if failure is not None:
        raise failure
    return status, head_headers


async def _receive_head(upstream: Stream) -> ResponseHead:
    try:
        head = await upstream.receive()
    except StreamReset as reset:
        condition = "refused-stream" if reset.refused else "reset"
        raise AttemptFailed(condition, UpstreamReset(_reset_detail(reset))) from reset
    if not isinstance(head, ResponseHead):
        raise AttemptFailed("reset", UpstreamReset("the upstream sent no response head"))
    return head


async def _upload(body: RequestBody, upstream: Stream) -> None:
    """Send the request body; a reset here is seen (and answered) by the response side."""
    try:
        await body.send_to(upstream)
    except StreamReset:
        return


def status_of(headers: HeaderList) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
    return 0


def _reset_detail(reset: StreamReset) -> str:
    if reset.connection_lost:
        return "the upstream connection closed before the response"
    if reset.refused:
        return "the upstream refused the stream"
    return f"the upstream reset the stream (HTTP/2 error code {reset.code})"
