"""Busy polling: the event loop spins on its poll for a moment before it sleeps in it.

On a virtual machine an idle vCPU halts, and waking it costs tens of µs: measured
here, one request at a time straight to an upstream took 85 µs, and 28 µs with
the cores kept awake. A proxy serving one request at a time sleeps twice a request
(for the upstream's answer, then for the next request), and pays that wake-up each
time. Spinning instead trades CPU for latency, as HAProxy's ``busy-polling``,
Netty's busy-wait epoll and KVM's halt polling do.

meshnode's spin is bounded and adaptive, so an idle node stays idle: a wait spins
(the poll with a zero timeout, over and over) for at most ``budget`` seconds, and
only while traffic flows, that is when the wait before it ended in I/O after a
short sleep (at most ``IDLE_AFTER`` budgets). A wait that a timer ended (a quiet
node: probes, watchers) does not spin the next time, and neither does one after a
longer sleep: requests a few milliseconds apart (a trickle, 100 a second) would
find every spin wasted, as Go's scheduler stops spinning once its spinning finds
nothing. The cost is therefore at most ``budget`` of CPU per short sleep under
traffic; ``hits``, ``misses`` and ``spun`` show it on ``/metrics``. It is on by
default (``[node] busy_poll = "50us"``), since at one request at a time it is a
third of what the node adds to a request's latency (docs/operations.md).

trio has no hook for this: the spin wraps the running loop's I/O manager (one
private attribute, ``runner.io_manager``, read and restored here alone). It is reached
only on the trio versions it was tested with (``TESTED_TRIO``), and only when asked for;
on any other, busy polling stays off, with a warning, and the loop is trio's own.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from meshnode.net.tested import untested

TESTED_TRIO = ("0.27", "0.35")  # the trio minor versions whose runner this wraps
IDLE_AFTER = 20  # budgets: a longer sleep means traffic paused, and the next wait sleeps
log = logging.getLogger("meshnode.busy_poll")

Events = list[tuple[int, int]]  # what trio's epoll manager returns: (fd, flags)


class BusyPoll:
    """The spin's setting and counters, for one trio run (one node process)."""

    def __init__(self) -> None:
        self.budget = 0.0  # seconds a wait may spin; 0: never (the loop is left as trio made it)
        self.hits = 0  # spins that an event ended
        self.misses = 0  # spins that used their whole budget, then slept
        self.spun = 0.0  # seconds spent spinning
        self._traffic = True  # the last sleep ended in I/O, soon, not at its timeout
        self._runner: Any = None  # the trio runner whose I/O manager is wrapped
        self._inner: Any = None

    def configure(self, budget: float) -> None:
        """Spin for up to ``budget`` seconds from now on (0 stops); call inside the run."""
        if budget > 0 and self._runner is None:
            runner = _current_runner()
            if runner is None:
                return
            if isinstance(runner.io_manager, _SpinningIOManager):
                # Another node in the same run (tests, an embedding program) already spins
                # the loop: one spin a loop, set by the node that installed it.
                return
            self._runner, self._inner = runner, runner.io_manager
            runner.io_manager = _SpinningIOManager(self._inner, self)
        self.budget = budget
        if budget <= 0:
            self.uninstall()

    def uninstall(self) -> None:
        """Give the run its own I/O manager back."""
        if self._runner is not None:
            self._runner.io_manager = self._inner
            self._runner = self._inner = None

    def get_events(self, timeout: float) -> Events:
        """The loop's I/O wait: spin first when traffic flows, then sleep for the rest."""
        poll = self._inner.get_events
        if timeout <= 0:  # tasks are runnable: trio only looks, it does not sleep
            events: Events = poll(0)
            return events
        if self._traffic:
            start = now = time.perf_counter()
            end = start + min(self.budget, timeout)
            while now < end:
                events = poll(0)
                now = time.perf_counter()
                if events:
                    self.hits += 1
                    self.spun += now - start
                    return events
            self.misses += 1
            self.spun += now - start
            timeout = max(0.0, timeout - (now - start))
        asleep = time.perf_counter()
        events = poll(timeout)
        self._traffic = bool(events) and time.perf_counter() - asleep <= IDLE_AFTER * self.budget
        return events


def _current_runner() -> Any:
    """trio's runner of this run, where it is known to be; None (and a warning) elsewhere."""
    problem = untested("trio", TESTED_TRIO)
    if problem is not None:
        log.warning("busy polling off: %s", problem)
        return None
    try:
        run_module = importlib.import_module("trio._core._run")
        runner = run_module.GLOBAL_RUN_CONTEXT.runner
        runner.io_manager  # noqa: B018 - the attribute the spin wraps must be there
    except (ImportError, AttributeError) as exc:
        log.warning("busy polling off: trio has moved its runner (%s)", exc)
        return None
    return runner


class _SpinningIOManager:
    """trio's I/O manager with the busy poll's wait; everything else is the manager's own
    (its methods looked up once, then kept here: ``wait_readable`` is on the request path)."""

    def __init__(self, inner: Any, busy_poll: BusyPoll) -> None:
        self._inner = inner
        self.get_events = busy_poll.get_events

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if callable(value):
            setattr(self, name, value)
        return value
