"""HTTP/1.1 end to end with wrk: straight to nginx, through meshnode, through HAProxy.

wrk (keep-alive, one thread) fetches 1 KiB from nginx (an HTTP/1.1 origin from
Debian) directly, through meshnode with ``protocol = "http1"`` (HTTP/1.1 on both
sides, keep-alive pooled upstream), and through HAProxy configured the same way
(one thread). The proxies alternate over ``--rounds`` rounds; the round with
the median CPU per request is kept. Reports req/s, p50/p99 latency (wrk's
--latency) and the proxy's CPU microseconds per request (from /proc).
``--before DIR`` adds an earlier checkout's meshnode, alternating with this one.

    ./dev bench http1
    ./dev bench http1 --seconds 10 --connections 50
    git worktree add /tmp/old REV && ./dev bench http1 --before /tmp/old
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import (
    free_port,
    run_haproxy,
    start_meshnode,
    wait_for_port,
    write_policies,
    write_report,
)
from proxy_bench import cpu_seconds

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def start_nginx(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (work / "html").mkdir()
    (work / "html" / "1k").write_bytes(b"k" * 1024)
    config = work / "nginx.conf"
    config.write_text(
        f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log stderr crit;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{ access_log off; keepalive_requests 1000000;\n"
        f"  client_body_temp_path {work}; proxy_temp_path {work};\n"
        f"  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};\n"
        f"  server {{ listen 127.0.0.1:{port}; root {work}/html; }} }}\n"
    )
    server = subprocess.Popen(["nginx", "-c", str(config), "-e", "stderr"])
    wait_for_port(port)
    return server, port


def start_haproxy_http1(work: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "haproxy-http1.cfg"
    config.write_text(
        "global\n  nbthread 1\n  maxconn 4000\n"
        "defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n"
        "  timeout client 60s\n  timeout server 60s\n"
        f"frontend mesh\n  bind 127.0.0.1:{port}\n  default_backend web\n"
        f"backend web\n  http-reuse always\n  server nginx 127.0.0.1:{upstream_port}\n"
    )
    return run_haproxy(config, port), port


def start_http1_meshnode(
    policies: Path, origin_port: int, source: Path | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A meshnode (``source``: another checkout's) with HTTP/1.1 on both sides."""
    outbound_port, admin_port = free_port(), free_port()
    write_policies(policies, outbound_port, admin_port, {})
    (policies / "web.toml").write_text(
        f'[upstream]\nname = "web"\ntls = "none"\nprotocol = "http1"\n'
        f'[discovery]\nendpoints = ["127.0.0.1:{origin_port}"]\n'
    )
    return start_meshnode(policies, outbound_port, source=source), outbound_port


def wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            "Host: web",
            f"http://127.0.0.1:{port}/1k",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out, re.M))
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert requests and rate and latency, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(requests.group(1)),
        "req_per_s": float(rate.group(1)),
        "p50_us": _micros(latency["50"]),
        "p99_us": _micros(latency["99"]),
        "failed": int(errors.group(1)) if errors else 0,
    }


def _micros(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * UNITS[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per run (max 60)")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of an earlier commit (git worktree add DIR REV): its meshnode runs as"
        " 'before', alternating with this one's",
    )
    args = parser.parse_args()
    seconds = max(1, min(args.seconds, 60))
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: ./dev bench installs it")
    work = Path(tempfile.mkdtemp(prefix="meshnode-http1-"))
    origin, origin_port = start_nginx(work)
    proxies = {"meshnode": start_http1_meshnode(work / "policies", origin_port)}
    if args.before is not None:
        proxies["before"] = start_http1_meshnode(work / "before", origin_port, args.before)
    proxies["haproxy"] = start_haproxy_http1(work, origin_port)
    results: dict[str, dict[str, float]] = {}
    try:
        results["direct"] = wrk(origin_port, seconds, args.connections)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in proxies}
        for _ in range(max(1, min(args.rounds, 10))):
            for name, (process, port) in proxies.items():
                before = cpu_seconds(process.pid)
                figures = wrk(port, seconds, args.connections)
                cpu = (cpu_seconds(process.pid) - before) / figures["requests"] * 1e6
                runs[name].append({**figures, "cpu_us_per_request": cpu})
        for name, measured in runs.items():
            results[name] = sorted(measured, key=lambda run: run["cpu_us_per_request"])[
                len(measured) // 2
            ]
    finally:
        for process, _ in proxies.values():
            process.terminate()
            process.wait(30)
        origin.terminate()
        origin.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'path':10} {'req/s':>9} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs/req':>11} {'failed':>7}")
    for name, figures in results.items():
        cpu = f"{figures['cpu_us_per_request']:.0f}" if "cpu_us_per_request" in figures else ""
        print(
            f"{name:10} {figures['req_per_s']:>9.0f} {figures['p50_us']:>9.0f} "
            f"{figures['p99_us']:>9.0f} {cpu:>11} {figures['failed']:>7.0f}"
        )
    write_report(args.out, "http1", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
