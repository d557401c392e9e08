"""A connection's request tasks: reused once idle, bounded, ended with the connection."""

from __future__ import annotations

import trio
import trio.testing

from meshnode.net.request_tasks import KEPT_IDLE, RequestTasks


class Server:
    """Serves a request by waiting until it is released; records which task served it."""

    def __init__(self) -> None:
        self.served_by: dict[int, trio.lowlevel.Task] = {}
        self.release = trio.Event()

    async def serve(self, request: int, peer: str) -> None:
        assert peer == "peer"
        self.served_by[request] = trio.lowlevel.current_task()
        await self.release.wait()


async def serving(nursery: trio.Nursery, server: Server, *requests: int) -> RequestTasks:
    """A connection's request tasks, once ``requests`` were submitted and all tasks wait."""
    tasks: RequestTasks[int, str] = RequestTasks(nursery, server.serve, "peer")
    for request in requests:
        tasks.submit(request)
    await trio.testing.wait_all_tasks_blocked()
    return tasks


async def test_an_idle_task_serves_the_next_request() -> None:
    server = Server()
    server.release.set()
    async with trio.open_nursery() as nursery:
        tasks = await serving(nursery, server, 1)
        tasks.submit(2)
        await trio.testing.wait_all_tasks_blocked()
        assert server.served_by[1] is server.served_by[2]
        assert len(nursery.child_tasks) == 1
        tasks.close()  # the idle task ends: the nursery can close
    assert tasks._idle == []


async def test_a_burst_gets_a_task_each_and_only_a_few_stay() -> None:
    server = Server()
    burst = KEPT_IDLE + 5
    async with trio.open_nursery() as nursery:
        tasks = await serving(nursery, server, *range(burst))
        assert len(set(server.served_by.values())) == burst  # all served at once
        server.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == len(tasks._idle) == KEPT_IDLE
        tasks.close()


async def test_cancelling_the_connection_ends_idle_and_busy_tasks() -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        tasks = await serving(nursery, server, 1)
        server.release.set()
        await trio.testing.wait_all_tasks_blocked()
        server.release = trio.Event()
        tasks.submit(2)  # the idle task takes it, and stays busy
        tasks.submit(3)
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 2
        nursery.cancel_scope.cancel()
    assert tasks._idle == []


async def test_after_close_a_finished_task_exits() -> None:
    server = Server()
    async with trio.open_nursery() as nursery:
        tasks = await serving(nursery, server, 1)
        tasks.close()  # the connection is done; its last request is still being served
        server.release.set()
    assert tasks._idle == []
