"""The upstream pool over in-memory connections, with a mock clock where time matters."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from meshnode.errors import UpstreamConnectFailure
from meshnode.net.pool import UpstreamPool
from meshnode.net.stream import END_OF_STREAM, ResponseHead, Stream
from meshnode.policy.units import Address
from tests.support.memory_upstream import MemoryUpstream

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]
ENDPOINT = Address("10.9.9.9", 80)  # never dialled: the connector hands out memory streams


async def test_streams_share_a_connection_until_it_is_full(nursery: trio.Nursery) -> None:
    upstream = MemoryUpstream(nursery, max_streams=2)
    pool = UpstreamPool(nursery, connector=upstream.connect)
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()  # the server's SETTINGS (2 streams) arrive
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    assert pool.connections(ENDPOINT) == 1
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    assert pool.connections(ENDPOINT) == 2
    await trio.testing.wait_all_tasks_blocked()
    assert len(upstream.requests) == 3


async def test_a_burst_on_a_cold_pool_opens_one_connection(nursery: trio.Nursery) -> None:
    upstream = MemoryUpstream(nursery)
    pool = UpstreamPool(nursery, connector=upstream.connect)
    async with trio.open_nursery() as burst:
        for _ in range(20):
            burst.start_soon(
                functools.partial(pool.open_stream, ENDPOINT, REQUEST, end_stream=True)
            )
    assert pool.connections(ENDPOINT) == 1


async def test_idle_connections_are_retired(nursery: trio.Nursery, autojump_clock) -> None:
    upstream = MemoryUpstream(nursery)
    pool = UpstreamPool(nursery, connector=upstream.connect, idle_timeout=60)
    stream = await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    await upstream.answer_all()
    assert isinstance(await stream.receive(), ResponseHead)
    assert await stream.receive() is END_OF_STREAM
    await trio.sleep(45)
    assert pool.connections(ENDPOINT) == 1
    await trio.sleep(60)
    assert pool.connections(ENDPOINT) == 0
    assert upstream.sessions[0].goaway_received is not None  # told, not just dropped


async def test_a_busy_connection_is_not_retired(nursery: trio.Nursery, autojump_clock) -> None:
    upstream = MemoryUpstream(nursery)
    pool = UpstreamPool(nursery, connector=upstream.connect, idle_timeout=60)
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    await trio.sleep(600)
    assert pool.connections(ENDPOINT) == 1


async def test_after_goaway_a_new_connection_is_made(nursery: trio.Nursery) -> None:
    upstream = MemoryUpstream(nursery)
    pool = UpstreamPool(nursery, connector=upstream.connect)
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    await trio.testing.wait_all_tasks_blocked()
    upstream.sessions[0].close_gracefully()
    await trio.testing.wait_all_tasks_blocked()
    await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    assert len(upstream.sessions) == 2


async def test_unreachable_endpoint_is_a_connect_failure(nursery: trio.Nursery) -> None:
    async def refuse(address: Address, peer: str | None) -> trio.abc.Stream:
        raise ConnectionRefusedError(111, "Connection refused")

    pool = UpstreamPool(nursery, connector=refuse)
    with pytest.raises(UpstreamConnectFailure, match=r"10\.9\.9\.9:80: Connection refused$"):
        await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)


async def test_a_slow_connect_times_out(nursery: trio.Nursery, autojump_clock) -> None:
    async def hang(address: Address, peer: str | None) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    pool = UpstreamPool(nursery, connector=hang, connect_timeout=5)
    with pytest.raises(UpstreamConnectFailure, match="connect timed out"):
        await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    assert trio.current_time() == pytest.approx(5)


async def test_a_connection_takes_no_stream_before_the_upstream_settings(
    nursery: trio.Nursery, autojump_clock
) -> None:
    """HTTP/2 lets a client assume no stream limit until the server's SETTINGS come: the
    pool waits for them (within the connect timeout), so that no burst passes a low one."""
    silent: list[trio.abc.Stream] = []

    async def mute(address: Address, peer: str | None) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        silent.append(server_end)  # never answers, not even SETTINGS
        return client_end

    pool = UpstreamPool(nursery, connector=mute, connect_timeout=5)
    with pytest.raises(UpstreamConnectFailure, match="sent no HTTP/2 SETTINGS: timed out"):
        await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
    assert trio.current_time() == pytest.approx(5)

    upstream = MemoryUpstream(nursery, max_streams=1)
    pool = UpstreamPool(nursery, connector=upstream.connect)
    async with trio.open_nursery() as burst:
        for _ in range(3):
            burst.start_soon(
                functools.partial(pool.open_stream, ENDPOINT, REQUEST, end_stream=True)
            )
    assert pool.connections(ENDPOINT) == 3  # one stream each, as the upstream allows


class SchedulerRounds(trio.abc.Instrument):
    """Counts the run loop's rounds (each one ends in a wait for I/O, if only a poll)."""

    def __init__(self) -> None:
        self.rounds = 0

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1


async def test_requests_waiting_for_a_connection_all_go_when_it_is_up(
    nursery: trio.Nursery,
) -> None:
    """At a busy upstream's recycle a hundred requests can wait for the next connection:
    they go together once it is up, not one per scheduler round behind a lock."""
    upstream = MemoryUpstream(nursery)
    pool = UpstreamPool(nursery, connector=upstream.connect)
    rounds = SchedulerRounds()
    opened_at: list[int] = []

    async def request() -> None:
        await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
        opened_at.append(rounds.rounds)

    trio.lowlevel.add_instrument(rounds)
    try:
        async with trio.open_nursery() as burst:
            for _ in range(50):
                burst.start_soon(request)
    finally:
        trio.lowlevel.remove_instrument(rounds)
    assert len(upstream.sessions) == 1
    assert max(opened_at) - min(opened_at) <= 1


async def test_requests_waiting_for_a_connection_share_its_failure(
    nursery: trio.Nursery, autojump_clock
) -> None:
    dialled: list[Address] = []

    async def hang(address: Address, peer: str | None) -> trio.abc.Stream:
        dialled.append(address)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    pool = UpstreamPool(nursery, connector=hang, connect_timeout=5)
    failed_at: list[float] = []

    async def request() -> None:
        with pytest.raises(UpstreamConnectFailure, match="connect timed out"):
            await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
        failed_at.append(trio.current_time())

    async with trio.open_nursery() as burst:
        for _ in range(5):
            burst.start_soon(request)
    assert failed_at == [pytest.approx(5)] * 5  # not 5, 10, 15, ... one after another
    assert dialled == [ENDPOINT]


async def test_a_cancelled_opener_leaves_the_connection_to_those_who_wait(
    nursery: trio.Nursery,
) -> None:
    gate = trio.Event()
    upstream = MemoryUpstream(nursery)

    async def slow_then_open(address: Address, peer: str | None) -> trio.abc.Stream:
        await gate.wait()
        return await upstream.connect(address, peer)

    pool = UpstreamPool(nursery, connector=slow_then_open)
    opened: list[Stream] = []

    async def waiter() -> None:
        opened.append(await pool.open_stream(ENDPOINT, REQUEST, end_stream=True))

    async def opener(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await pool.open_stream(ENDPOINT, REQUEST, end_stream=True)
            raise AssertionError("the opener was cancelled")

    opening = await nursery.start(opener)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    opening.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not opened
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(opened) == 1 and pool.connections(ENDPOINT) == 1
