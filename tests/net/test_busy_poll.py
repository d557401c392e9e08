"""The busy poll in a real trio run: it catches I/O by spinning, leaves a quiet loop to
sleep, and gives the loop its own I/O manager back."""

from __future__ import annotations

import socket
import threading

import trio
import trio.socket
from trio._core._run import GLOBAL_RUN_CONTEXT

from meshnode.net.busy_poll import BusyPoll

BUDGET = 0.001  # a second's thousandth: far longer than a readable socket takes to be seen


async def test_the_spin_catches_io_that_comes_while_the_loop_would_sleep() -> None:
    busy_poll = BusyPoll()
    busy_poll.configure(BUDGET)
    one, other = socket.socketpair()
    reader = trio.socket.from_stdlib_socket(one)
    received = []
    try:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                received.append(await reader.recv(10))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            # Sent without a checkpoint: the reader wakes only through the loop's next wait,
            # which every task is then blocked in.
            other.send(b"ping")
    finally:
        busy_poll.uninstall()
        reader.close()
        other.close()
    assert received == [b"ping"]
    assert busy_poll.hits >= 1
    assert busy_poll.misses == 0


async def test_a_quiet_loop_spins_once_then_sleeps() -> None:
    busy_poll = BusyPoll()
    busy_poll.configure(BUDGET)
    try:
        # Nothing comes: the first wait spins its whole budget, then sleeps out the timer;
        # a wait that a timer ended is no sign of traffic, so the next one does not spin.
        await trio.sleep(5 * BUDGET)
        await trio.sleep(5 * BUDGET)
    finally:
        busy_poll.uninstall()
    assert (busy_poll.hits, busy_poll.misses) == (0, 1)
    assert busy_poll.spun >= BUDGET


async def test_after_a_long_sleep_the_next_wait_sleeps_at_once() -> None:
    """Traffic a long way apart (requests 100 a second) would find every spin wasted: a
    sleep longer than ``IDLE_AFTER`` budgets, even one that I/O ended, stops the spinning
    until a short one says traffic flows again."""
    busy_poll = BusyPoll()
    busy_poll.configure(BUDGET)
    one, other = socket.socketpair()
    reader = trio.socket.from_stdlib_socket(one)
    long_sleep = 40 * BUDGET  # twice IDLE_AFTER budgets
    try:
        threading.Timer(long_sleep, other.send, [b"late"]).start()
        assert await reader.recv(10) == b"late"  # spun once for nothing, then slept long
        assert (busy_poll.hits, busy_poll.misses) == (0, 1)
        threading.Timer(BUDGET * 5, other.send, [b"soon"]).start()
        assert await reader.recv(10) == b"soon"  # no spin after the long sleep
        assert (busy_poll.hits, busy_poll.misses) == (0, 1)
        async with trio.open_nursery() as nursery:
            received = []

            async def read() -> None:
                received.append(await reader.recv(10))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            other.send(b"flowing")  # after a short sleep: this wait spins, and catches it
    finally:
        busy_poll.uninstall()
        reader.close()
        other.close()
    assert received == [b"flowing"]
    assert (busy_poll.hits, busy_poll.misses) == (1, 1)


async def test_a_budget_of_zero_gives_the_loop_its_own_io_manager_back() -> None:
    runner = GLOBAL_RUN_CONTEXT.runner
    own = runner.io_manager
    busy_poll = BusyPoll()
    busy_poll.configure(BUDGET)
    assert runner.io_manager is not own
    assert trio.lowlevel.current_statistics().io_statistics.backend == "epoll"  # delegated
    busy_poll.configure(0)
    assert runner.io_manager is own
    await trio.sleep(2 * BUDGET)
    assert (busy_poll.hits, busy_poll.misses) == (0, 0)


async def test_a_second_node_in_the_same_run_leaves_the_spin_to_the_first() -> None:
    """Two nodes in one trio run (a test's, an embedding program's): the loop spins once,
    and whichever stops first, the loop is left working."""
    runner = GLOBAL_RUN_CONTEXT.runner
    own = runner.io_manager
    first, second = BusyPoll(), BusyPoll()
    first.configure(BUDGET)
    second.configure(BUDGET)
    assert runner.io_manager._inner is own
    first.uninstall()
    second.uninstall()
    assert runner.io_manager is own
    await trio.sleep(0)


async def test_on_a_trio_it_was_not_tested_with_it_stays_off(monkeypatch, caplog) -> None:
    """A newer trio may have moved the runner: the spin is not attempted, with a warning."""
    monkeypatch.setattr("meshnode.net.tested.version", lambda name: "0.99.0")
    busy_poll = BusyPoll()
    manager = GLOBAL_RUN_CONTEXT.runner.io_manager
    busy_poll.configure(BUDGET)
    assert busy_poll.budget == 0
    assert GLOBAL_RUN_CONTEXT.runner.io_manager is manager
    assert "busy polling off: trio 0.99.0 (tested 0.27 to 0.35)" in caplog.text
