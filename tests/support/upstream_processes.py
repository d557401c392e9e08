"""Upstreams in processes of their own, as the connection-lifecycle tests need them.

An upstream inside the test process would share meshnode's HTTP/2 code and HPACK coders
and hide exactly the protocol bugs these tests look for, so each one here is a separate
process: Debian's nginx, Hypercorn (``recycling_upstream``), or a scripted h2 or HTTP/1.1
server (``scripted_upstream``). Each lives until the test's fixture stops it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import attrs

from tests.conftest import free_port, require


class PythonUpstream:
    """``python -m MODULE ARGS``, once it printed ``listening ADDRESS``."""

    def __init__(self, module: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("listening "), f"{module} did not start: {line!r}"
        self.address = line.split()[1]

    def counts(self, *, http1: bool = False) -> dict[str, int]:
        """What the upstream's application processed, by method (``GET /_counts``)."""
        version = "--http1.1" if http1 else "--http2-prior-knowledge"
        result = subprocess.run(
            [require("curl"), "-s", "--fail", version, f"http://{self.address}/_counts"],
            capture_output=True,
            check=True,
            timeout=10,
        )
        counted: dict[str, int] = json.loads(result.stdout)
        return counted

    def terminate(self) -> None:
        """SIGTERM (Hypercorn's graceful shutdown), and wait for the exit."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def hypercorn(
    max_requests: int, *, port: int = 0, capacity: int = 1_000_000, delay_ms: int = 0
) -> PythonUpstream:
    """Hypercorn ending each HTTP/2 connection with GOAWAY after ``max_requests``;
    ``capacity``: how many ``/work/MS`` requests it serves at once (the rest queue);
    ``delay_ms``: how late every answer comes."""
    return PythonUpstream(
        "tests.support.recycling_upstream",
        *("--max-requests", str(max_requests), "--port", str(port)),
        *("--capacity", str(capacity), "--delay", str(delay_ms)),
    )


def scripted(mode: str, every: int = 3, *options: str) -> PythonUpstream:
    return PythonUpstream("tests.support.scripted_upstream", mode, "--every", str(every), *options)


class Nginx:
    """Debian's nginx (``nginx-light``) answering ``ok`` on ``servers`` ports (or on
    ``addresses``), over h2c or HTTP/1.1, with ``keepalive_requests`` as given; it logs
    every request it processed."""

    def __init__(
        self,
        directory: Path,
        *,
        servers: int = 1,
        keepalive_requests: int = 1000,
        h2: bool = True,
        addresses: list[str] | None = None,
    ):
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "access.log"
        self.addresses = addresses or [f"127.0.0.1:{free_port()}" for _ in range(servers)]
        listen = "".join(
            f"  server {{ listen {address}{' http2' if h2 else ''}; "
            'location / { return 200 "ok"; } }\n'
            for address in self.addresses
        )
        config = directory / "nginx.conf"
        config.write_text(
            textwrap.dedent(f"""
                worker_processes 1;
                error_log {directory}/error.log;
                pid {directory}/nginx.pid;
                events {{ worker_connections 1024; }}
                http {{
                  access_log {self.log};
                  client_body_temp_path {directory}/body;
                  keepalive_requests {keepalive_requests};
                """)
            + listen
            + "}\n"
        )
        self.process = subprocess.Popen(
            [require("nginx"), "-p", str(directory), "-c", str(config), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        for address in self.addresses:
            wait_for_listener(address, self.process)

    def requests(self, method: str) -> int:
        """How many ``method`` requests nginx processed (its access log), once the log has
        settled: nginx writes a request's line after its answer went out, so a client can
        have every answer a moment before the last lines are written."""
        count, settled_for = -1, 0
        deadline = time.monotonic() + 5
        while settled_for < 3 and time.monotonic() < deadline:
            now = self.log.read_text().count(f'"{method} ')
            settled_for = settled_for + 1 if now == count else 0
            count = now
            time.sleep(0.05)
        return count

    def quit(self) -> None:
        """nginx's graceful shutdown (SIGQUIT): it stops listening, sends GOAWAY, finishes
        what it accepted, and exits."""
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def wait_for_listener(address: str, process: subprocess.Popen[bytes]) -> None:
    """Until ``address`` accepts a connection (failing if ``process`` exited)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server for {address} exited"
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {address}")


@attrs.frozen
class Load:
    """What h2load reported."""

    succeeded: int
    failed: int
    errored: int
    statuses: dict[str, int]
    output: str


def h2load(
    address: str, authority: str, requests: int, *, data: Path | None = None, path: str = "/x"
) -> Load:
    """``requests`` through the node at ``h2load -c 4 -m 8`` (POSTs of ``data``, if given)."""
    command = [require("h2load"), "-n", str(requests), "-c", "4", "-m", "8"]
    if data is not None:
        command += ["-d", str(data)]
    command += ["-H", f":authority: {authority}", f"http://{address}{path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    out = result.stdout
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert found is not None, out
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert statuses is not None, out
    return Load(
        int(found.group(1)),
        int(found.group(2)),
        int(found.group(3)),
        dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, statuses.groups()), strict=True)),
        out,
    )


@attrs.frozen
class Paced:
    """What a paced h2load run saw: seconds each 200 and each 503 took (from the warm-up
    on), and 200s a second over the whole run."""

    served: list[float]
    refused: list[float]
    served_per_second: float


def paced_h2load(
    url: str,
    authority: str,
    *,
    rate: float,
    clients: int,
    streams: int,
    seconds: int,
    warm_up: float = 1.0,
) -> Paced:
    """``rate`` requests a second for ``seconds`` (h2load ``--rps``, spread over ``clients``
    connections with up to ``streams`` each at once): an offered load, not a closed loop in
    which every answer, a refusal too, brings the next request at once."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        subprocess.run(
            [
                *(require("h2load"), "-D", str(seconds), "-c", str(clients), "-m", str(streams)),
                *("--rps", str(max(1, int(rate / clients)))),
                *("-H", f":authority: {authority}", "--log-file", log.name, url),
            ],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
        lines = [line.split() for line in log if line.strip()]
    start = min(int(fields[0]) for fields in lines)
    settled = [fields for fields in lines if int(fields[0]) - start >= warm_up * 1e6]
    return Paced(
        [int(fields[2]) / 1e6 for fields in settled if fields[1] == "200"],
        [int(fields[2]) / 1e6 for fields in settled if fields[1] == "503"],
        sum(fields[1] == "200" for fields in lines) / seconds,
    )


def one_at_a_time(url: str, authority: str, requests: int = 50) -> float:
    """The median seconds of ``requests`` sent one after another: the no-load latency."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        subprocess.run(
            [
                *(require("h2load"), "-n", str(requests), "-c", "1", "-m", "1"),
                *("-H", f":authority: {authority}", "--log-file", log.name, url),
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return statistics.median(int(line.split()[2]) / 1e6 for line in log if line.strip())
