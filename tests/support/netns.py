"""Hosts for the tests as Linux network namespaces (``ip netns``, as root): each with its own
address on one switch, so that what crosses the "network" really does.

    switch namespace: bridge br0
        veth h1 <-> 10.77.0.1/24 in namespace <run>-h1
        veth h2 <-> 10.77.0.2/24 in namespace <run>-h2
        ...

Every name carries a random run id, so parallel or leftover runs never collide; ``close``
deletes every namespace the run made (their veths go with them) and kills what runs in
them, and the fixture calls it even when the test fails. Only these namespaces and
their own loopbacks are ever sent traffic.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Sequence

SUBNET = "10.77.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Hosts:
    """``count`` hosts on one bridge; ``address(n)`` is host n's (from 1)."""

    def __init__(self, count: int) -> None:
        self.run = f"mn{secrets.token_hex(3)}"
        self.switch = f"{self.run}-sw"
        self.names = [f"{self.run}-h{number}" for number in range(1, count + 1)]
        self.processes: list[subprocess.Popen[str]] = []
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for number, name in enumerate(self.names, start=1):
            _ip("netns", "add", name)
            self._made.append(name)
            outside, inside = f"{self.run}s{number}", f"{self.run}h{number}"
            _ip(
                "link",
                "add",
                outside,
                "netns",
                self.switch,
                "type",
                "veth",
                "peer",
                inside,
                "netns",
                name,
            )
            _ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
            _ip("-n", name, "addr", "add", f"{self.address(number)}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")

    def address(self, number: int) -> str:
        return f"{SUBNET}.{number}"

    def command(self, number: int, args: Sequence[str]) -> list[str]:
        """``args`` run on host ``number``."""
        return ["ip", "netns", "exec", self.names[number - 1], *args]

    def run_on(self, number: int, args: Sequence[str], timeout: float = 60) -> str:
        result = subprocess.run(
            self.command(number, args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode:
            raise AssertionError(f"{args} on host {number}: {result.stderr or result.stdout}")
        return result.stdout

    def start(self, number: int, args: Sequence[str], **options: object) -> subprocess.Popen[str]:
        """A process on host ``number``, killed by ``close`` if still running."""
        process = subprocess.Popen(self.command(number, args), text=True, **options)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        for name in reversed(self._made):
            _kill_inside(name)
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=10, check=False
            )


def _kill_inside(namespace: str) -> None:
    """Whatever a test left running in ``namespace`` (a daemonised child, say)."""
    found = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10, check=False
    )
    for pid in found.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue
