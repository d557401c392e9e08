"""One try's deadlines, at the instant a real socket cannot arrange.

The integration tests (tests/integration/test_http1.py, test_resilience.py) cover
per-try and request timeouts end to end. What they cannot place is a response head
arriving in the same scheduler round as the per-try deadline: here the upstream is a
stand-in whose ``receive`` moves the mock clock past the deadline and then gives the
head back, so the try resumes with its head and its scope already cancelled.
"""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from meshnode.actors.picking import EndpointLoad
from meshnode.net.stream import CANCEL, ResponseHead
from meshnode.policy.models import Endpoint
from meshnode.policy.units import Address
from meshnode.proxy.attempt import Exchange, attempt


class LateUpstream:
    """An upstream stream whose head arrives just as the clock passes ``late_by``."""

    def __init__(self, clock: trio.testing.MockClock, late_by: float) -> None:
        self.clock = clock
        self.late_by = late_by
        self.reset_with: int | None = None

    async def receive(self) -> ResponseHead:
        self.clock.jump(self.late_by)
        await trio.lowlevel.cancel_shielded_checkpoint()  # the round that expires the deadline
        return ResponseHead([(b":status", b"200")])

    def consume_end(self) -> bool:
        return True

    def reset(self, code: int) -> None:
        self.reset_with = code


class Pool:
    def __init__(self, upstream: LateUpstream) -> None:
        self.upstream = upstream

    async def open_stream(self, *args: object, **kwargs: object) -> LateUpstream:
        return self.upstream


class Client:
    def __init__(self) -> None:
        self.heads_sent: list[object] = []

    async def send_headers(self, headers: object, end_stream: bool = False) -> None:
        self.heads_sent.append(headers)


REQUEST_DEADLINE = 10.0
PER_TRY = 0.5


async def try_with_head_after(
    clock: trio.testing.MockClock, late_by: float, *, opened_with_try_deadline: bool = False
) -> tuple[trio.CancelScope, LateUpstream, Client, int | None]:
    """One try with a per-try timeout of 0.5 s, its head arriving ``late_by`` seconds in:
    the try's scope, the upstream, the client, and the status relayed (None if none).
    ``opened_with_try_deadline``: the scope starts with the per-try deadline, as the retry
    loop opens it for a try that waited for nothing; else with the request's."""
    upstream, client, status = LateUpstream(clock, late_by), Client(), None
    started = trio.current_time()
    opening = started + (PER_TRY if opened_with_try_deadline else REQUEST_DEADLINE)
    with trio.CancelScope(deadline=opening) as scope:
        endpoint = Endpoint(Address("127.0.0.1", 1))
        exchange = Exchange(
            Pool(upstream),  # type: ignore[arg-type]
            endpoint,
            [],
            None,
            client,  # type: ignore[arg-type]
            scope,
            started=started,
            deadline=started + REQUEST_DEADLINE,
            load=EndpointLoad(endpoint.address),
            per_try=PER_TRY,
        )
        try:
            status, _ = await attempt(exchange)
        finally:
            exchange.close()  # as the retry loop does once a try is done
    return scope, upstream, client, status


@pytest.mark.parametrize("opened_with_try_deadline", [False, True])
async def test_a_head_arriving_as_the_per_try_deadline_passes_is_not_relayed(
    mock_clock: trio.testing.MockClock, opened_with_try_deadline: bool
) -> None:
    scope, upstream, client, status = await try_with_head_after(
        mock_clock, 1.0, opened_with_try_deadline=opened_with_try_deadline
    )
    assert scope.cancelled_caught and status is None
    assert client.heads_sent == []  # a retry may still follow: nothing reached the client
    assert upstream.reset_with == CANCEL
    assert scope.deadline < REQUEST_DEADLINE  # still the per-try one: read as a try timeout


@pytest.mark.parametrize("opened_with_try_deadline", [False, True])
async def test_a_head_in_time_gives_the_body_the_request_deadline(
    mock_clock: trio.testing.MockClock, opened_with_try_deadline: bool
) -> None:
    scope, _, client, status = await try_with_head_after(
        mock_clock, 0.1, opened_with_try_deadline=opened_with_try_deadline
    )
    assert (status, len(client.heads_sent)) == (200, 1)
    assert scope.deadline == REQUEST_DEADLINE
