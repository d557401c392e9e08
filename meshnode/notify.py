"""sd_notify for ``Type=notify`` units: readiness, reloads, stopping, status, watchdog pings.

Written here rather than taken from a library because it is one datagram per
message (sd_notify(3)): ``NOTIFY_SOCKET`` names an AF_UNIX datagram socket
("@" for the abstract namespace). Everything is a no-op when it is unset, so
the node behaves the same outside systemd. Watchdog pings come from a task on
the event loop at half of ``WATCHDOG_USEC``: a stuck loop stops pinging, and
systemd restarts the node.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if path:
            self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2_000_000 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """One datagram; never blocks (a full or missing socket loses the message, logged)."""
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                sock.sendto("\n".join(fields).encode(), self._address)
            except OSError as exc:
                log.warning("sd_notify %s failed: %s", fields[0], exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping at half the watchdog interval, from the event loop, for as long as it runs."""
        if self.watchdog_interval is None or self._address is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)
