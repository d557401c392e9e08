"""meshnode under systemd: the unit file, and sd_notify over a real datagram socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from meshnode.notify import Notifier
from tests.conftest import NodeProcess, require, upstream_toml, write_policies

UNIT = Path(__file__).parents[2] / "systemd" / "meshnode.service"


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    meshnode = Path(sys.executable).parent / "meshnode"
    unit = tmp_path / "meshnode.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/meshnode", str(meshnode)))
    result = subprocess.run(
        [require("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.stdout + result.stderr) == ""  # its exit code is 0 even with warnings
    assert result.returncode == 0


def test_notify_is_a_no_op_without_a_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("nothing happens")
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def receive(sock: socket.socket, wanted: str, seconds: float = 10) -> list[str]:
    """Datagrams until one holds ``wanted``; the messages, split into fields."""
    deadline = time.monotonic() + seconds
    seen: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            fields = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
        seen.extend(fields)
        if wanted in fields:
            return seen
    raise AssertionError(f"no {wanted} in {seen}")


def test_notify_ready_watchdog_reload_and_stopping(tmp_path: Path, node_process) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        os.environ["NOTIFY_SOCKET"] = str(path)
        os.environ["WATCHDOG_USEC"] = "200000"
        try:
            node: NodeProcess = node_process(
                write_policies(tmp_path / "p", {"api": upstream_toml("api", "127.0.0.1:9")})
            )
        finally:
            del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
        ready = receive(sock, "READY=1")
        assert any(f.startswith("STATUS=serving 1 upstream(s), policies ") for f in ready)
        pings = receive(sock, "WATCHDOG=1") + receive(sock, "WATCHDOG=1", seconds=1)
        assert pings.count("WATCHDOG=1") >= 2  # every 100 ms: half of WATCHDOG_USEC
        node.process.send_signal(signal.SIGHUP)
        reload = receive(sock, "RELOADING=1")
        assert any(f.startswith("MONOTONIC_USEC=") for f in reload)
        assert "READY=1" in receive(sock, "READY=1")
        node.process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receive(sock, "STOPPING=1")
        assert node.process.wait(timeout=30) == 0
