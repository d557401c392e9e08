"""Helpers the benchmarks share: ports, waiting for listeners, starting nghttpd."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Every resilience section on, none of them ever deciding anything: the pure cost of checking.
FULL_STACK = """
[timeout]
request = "10s"
per_try = "5s"
[circuit_breaker]
failure_threshold = 1000000
volume_threshold = 1000000
[retry]
max_retries = 2
retry_on = ["connect-failure", "refused-stream", "reset", "503"]
[rate_limit]
requests_per_second = 1000000
burst = 1000000
[balancer]
max_connections_per_instance = 100000
[chaos]
abort_percent = 0
delay_percent = 0
[fallback]
kind = "static"
status = 503
on = ["circuit-open"]
"""


def write_report(directory: Path, suite: str, report: dict[str, object]) -> Path:
    """``report`` as ``<directory>/<suite>-<time>.json``, with the machine it ran on."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{suite}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        # Which build: a distribution's (PGO and LTO) runs this suite about a fifth faster
        # than a plain source build of the same version.
        "python_executable": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "cpus": os.cpu_count(),
    }
    target.write_text(json.dumps({"machine": machine, **report}, indent=2, default=str))
    print(f"\nwritten to {target}")
    return target


def cheapest(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round that cost the proxy least CPU per request: a busy neighbour on the machine
    only ever adds to it, so this is the steadiest figure of a few rounds."""
    return min(runs, key=lambda run: run["cpu_us_per_request"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def start_nghttpd(docroot: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nghttpd from Debian serving ``docroot`` over cleartext HTTP/2 on a free port."""
    port = free_port()
    server = subprocess.Popen(
        ["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", str(docroot), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return server, port


def start_haproxy(
    work: Path, upstream_port: int, grpc_port: int | None = None, *, busy_polling: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """HAProxy from Debian as the equivalent proxy: HTTP/2 cleartext on both sides, one
    thread (as one meshnode worker), no logging; requests for authority ``grpc`` go to
    ``grpc_port`` when given; ``busy_polling``: its own spin before sleeping (as
    meshnode's ``[node] busy_poll``)."""
    port = free_port()
    config = work / ("haproxy-busy-polling.cfg" if busy_polling else "haproxy.cfg")
    grpc = ""
    if grpc_port is not None:
        grpc = (
            "  use_backend grpc if { hdr(host) -i grpc }\n"
            f"backend grpc\n  server grpcio 127.0.0.1:{grpc_port} proto h2\n"
        )
    config.write_text(
        "global\n  nbthread 1\n  maxconn 4000\n"
        + ("  busy-polling\n" if busy_polling else "")
        + "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        f"frontend mesh\n  bind 127.0.0.1:{port} proto h2\n  default_backend web\n{grpc}"
        f"backend web\n  server nghttpd 127.0.0.1:{upstream_port} proto h2\n"
    )
    return run_haproxy(config, port), port


def run_haproxy(config: Path, port: int) -> subprocess.Popen[bytes]:
    """HAProxy on ``config``, once it listens on ``port``."""
    proxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proxy


def write_policies(
    directory: Path,
    outbound_port: int,
    admin_port: int,
    upstreams: dict[str, list[str]],
    extra: str = "",
    node_settings: str = "",
    node_sections: str = "",
) -> None:
    """A node.toml on the given ports and one file per upstream with static endpoints;
    ``node_settings``: more [node] lines; ``node_sections``: more sections of node.toml."""
    directory.mkdir(parents=True, exist_ok=True)
    node_settings = node_settings.rstrip("\n") + "\n" if node_settings else ""
    (directory / "node.toml").write_text(
        f'[node]\nname = "bench"\n{node_settings}'
        f'[listeners.outbound]\naddress = "127.0.0.1:{outbound_port}"\n'
        f'[admin]\naddress = "127.0.0.1:{admin_port}"\n' + node_sections
    )
    for name, endpoints in upstreams.items():
        write_upstream(directory, name, endpoints, extra)


def write_upstream(directory: Path, name: str, endpoints: list[str], extra: str = "") -> None:
    """An upstream with static endpoints; ``extra`` adds policy sections."""
    listed = ", ".join(f'"{endpoint}"' for endpoint in endpoints)
    (directory / f"{name}.toml").write_text(
        f'[upstream]\nname = "{name}"\ntls = "none"\n[discovery]\nendpoints = [{listed}]\n' + extra
    )


def start_meshnode(
    policies: Path,
    outbound_port: int,
    *options: str,
    source: Path | None = None,
    python: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``meshnode serve``; ``source``: run the meshnode package of another checkout (an
    older commit's worktree, for before-and-after figures from one run); ``python``: under
    another interpreter (a venv's, with meshnode and its dependencies installed)."""
    env = None
    if source is not None:
        env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    node = subprocess.Popen(
        [
            str(python or sys.executable),
            "-m",
            "meshnode",
            "serve",
            "--policies",
            str(policies),
            "--log-level",
            "warning",
            *options,
        ],
        env=env,
        cwd=source,
    )
    wait_for_port(outbound_port)
    return node


def start_bare_relay(port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    """bench/bare_relay.py on ``port``, relaying every request to ``upstream_port``."""
    script = Path(__file__).parent / "bare_relay.py"
    relay = subprocess.Popen([sys.executable, str(script), str(port), str(upstream_port)])
    wait_for_port(port)
    return relay


def start_trace_sink() -> tuple[ThreadingHTTPServer, str]:
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing: what a node
    spends on spans, without a collector's own cost in the figures. Returns the server
    (``shutdown`` it) and its base URL."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
