"""The churn scenario: an upstream that recycles each HTTP/2 connection after 100 requests
(Debian's nginx, ``keepalive_requests 100``: GOAWAY, then it finishes what it accepted),
beside the same nginx recycling none, through meshnode and through HAProxy (``retries
3``). Neither proxy may fail a request, and meshnode's req/s under churn should be within
a tenth of its req/s without."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from common import (
    cheapest,
    free_port,
    run_haproxy,
    start_meshnode,
    wait_for_port,
    write_policies,
)

CHURN_REQUESTS = 100  # per upstream connection
STEADY_REQUESTS = 1_000_000_000  # as good as none
CLIENTS, STREAMS = 10, 10

H2load = Callable[..., dict[str, float]]


def start_nginx(directory: Path, keepalive_requests: int) -> tuple[subprocess.Popen[bytes], int]:
    """nginx answering a 1 KiB body over h2c, recycling connections as told."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "nginx.conf").write_text(
        f"worker_processes 1;\nerror_log {directory}/error.log;\npid {directory}/nginx.pid;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests {keepalive_requests};\n"
        f"  server {{ listen 127.0.0.1:{port} http2;\n"
        f'    location / {{ return 200 "{"k" * 1024}"; }} }} }}\n'
    )
    nginx = subprocess.Popen(
        ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"]
    )
    wait_for_port(port)
    return nginx, port


def start_haproxy_retrying(
    work: Path, name: str, upstream_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """HAProxy from Debian in front of ``upstream_port`` with ``retries 3`` (its default
    ``retry-on``), one thread as one meshnode worker."""
    port = free_port()
    config = work / f"haproxy-{name}.cfg"
    config.write_text(
        "global\n  nbthread 1\n  maxconn 4000\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n  retries 3\n"
        f"frontend mesh\n  bind 127.0.0.1:{port} proto h2\n  default_backend web\n"
        f"backend web\n  server nginx 127.0.0.1:{upstream_port} proto h2\n"
    )
    return run_haproxy(config, port), port


def churn_row(
    work: Path,
    requests: int,
    rounds: int,
    h2load: H2load,
    cpu_seconds: Callable[[int], float],
) -> dict[str, object]:
    """Each proxy's figures against the churning nginx and the steady one (the run with
    the least CPU of ``rounds``). The four paths take turns round by round, so that the
    machine's drift during the run falls on all of them alike."""
    row: dict[str, object] = {"requests": requests}
    started: list[subprocess.Popen[bytes]] = []
    paths: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for upstream, keepalive in (("churn", CHURN_REQUESTS), ("steady", STEADY_REQUESTS)):
            nginx, nginx_port = start_nginx(work / f"nginx-{upstream}", keepalive)
            started.append(nginx)
            outbound, admin = free_port(), free_port()
            write_policies(
                work / f"churn-{upstream}", outbound, admin, {"web": [f"127.0.0.1:{nginx_port}"]}
            )
            node = start_meshnode(work / f"churn-{upstream}", outbound)
            haproxy, haproxy_port = start_haproxy_retrying(work, upstream, nginx_port)
            started += [node, haproxy]
            paths[f"meshnode {upstream}"] = (node, outbound)
            paths[f"haproxy {upstream}"] = (haproxy, haproxy_port)
        runs: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
        for _, port in paths.values():
            h2load(f"http://127.0.0.1:{port}/", 2000, CLIENTS, STREAMS, "web")  # warm up
        for _ in range(rounds):
            for path, (process, port) in paths.items():
                before = cpu_seconds(process.pid)
                figures = h2load(f"http://127.0.0.1:{port}/", requests, CLIENTS, STREAMS, "web")
                cpu_us = (cpu_seconds(process.pid) - before) / requests * 1e6
                runs[path].append({**figures, "cpu_us_per_request": cpu_us})
        for path, measured in runs.items():
            row[path] = cheapest(measured)
    finally:
        for process in started:
            process.terminate()
            process.wait(30)
    return row
