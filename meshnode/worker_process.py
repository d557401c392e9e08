"""What a process does as a worker of ``serve --workers``, apart from the parent's machinery
(``meshnode.workers``, with its HTTP client and metrics parser, loaded only by the parent):
how many workers to run, saying it is ready, and leaving when its parent is gone."""

from __future__ import annotations

import json
import logging
import os
import signal

import trio

from meshnode.policy import Address

log = logging.getLogger(__name__)

READY_PREFIX = "meshnode-worker-ready "  # a worker's line on stdout, read by its parent
PARENT_CHECK_INTERVAL = 1.0


def worker_count(value: str) -> int:
    """``auto`` (the usable cores) or a positive number."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    count = int(value)
    if count < 1:
        raise ValueError("--workers must be at least 1 or auto")
    return count


async def follow_parent() -> None:
    """In a worker: drain and exit (SIGTERM to itself) once the parent is gone, even killed,
    rather than serve on as an orphan nobody supervises. The parent's death shows as a new
    parent process id; prctl's PDEATHSIG cannot serve, as it follows the thread that
    started the worker, and Trio starts processes from short-lived threads."""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(PARENT_CHECK_INTERVAL)
    log.error("the parent process is gone: draining")
    os.kill(os.getpid(), signal.SIGTERM)


def announce_ready(admin: Address) -> None:
    """A worker tells its parent it serves, and where its admin listener is."""
    print(READY_PREFIX + json.dumps({"admin": str(admin)}), flush=True)
