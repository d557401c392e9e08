"""Reload latency: from a policy change to the new policy serving requests.

A node routes ``api`` to one of two nghttpd servers that answer differently;
each trial points ``api`` at the other server and times how long until a
request through meshnode is answered by it. Three triggers are measured: a file
written in the policies directory (the watcher polls every 250 ms, then waits
for 250 ms of quiet), SIGHUP, and ``POST /admin/reload``.

    ./dev bench reload                # 10 trials per trigger
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from common import (
    free_port,
    start_meshnode,
    start_nghttpd,
    write_policies,
    write_report,
    write_upstream,
)

TIMEOUT = 10.0


def answer(outbound_port: int) -> bytes:
    return subprocess.run(
        [
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "host: api",
            f"http://127.0.0.1:{outbound_port}/who",
        ],
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout


def time_until(outbound_port: int, expected: bytes, since: float) -> float:
    while time.monotonic() - since < TIMEOUT:
        if answer(outbound_port) == expected:
            return time.monotonic() - since
    raise SystemExit(f"the new policy was not serving after {TIMEOUT}s")


def measure(work: Path, addresses: dict[str, str], trigger: str, trials: int) -> list[float]:
    """Start a node (watching files only for the "file" trigger); flip ``api`` ``trials`` times."""
    outbound_port, admin_port = free_port(), free_port()
    policies = work / f"policies-{trigger}"
    write_policies(policies, outbound_port, admin_port, {"api": [addresses["one"]]})
    node = start_meshnode(policies, outbound_port, *([] if trigger == "file" else ["--no-watch"]))
    latencies = []
    current = "one"
    try:
        for _ in range(trials):
            target = "two" if current == "one" else "one"
            if trigger == "file":
                started = time.monotonic()
                write_upstream(policies, "api", [addresses[target]])
            else:
                write_upstream(policies, "api", [addresses[target]])
                started = time.monotonic()
                if trigger == "sighup":
                    os.kill(node.pid, signal.SIGHUP)
                else:
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{admin_port}/admin/reload", method="POST"
                    )
                    urllib.request.urlopen(request, timeout=10).read()
            latencies.append(time_until(outbound_port, target.encode(), started))
            current = target
    finally:
        node.terminate()
        node.wait(30)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="per trigger (max 100)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    trials = min(args.trials, 100)

    work = Path(tempfile.mkdtemp(prefix="meshnode-reload-bench-"))
    servers = []
    addresses = {}
    try:
        for name in ("one", "two"):
            (work / name).mkdir()
            (work / name / "who").write_bytes(name.encode())
            server, port = start_nghttpd(work / name)
            servers.append(server)
            addresses[name] = f"127.0.0.1:{port}"
        results = {
            trigger: measure(work, addresses, trigger, trials)
            for trigger in ("file", "sighup", "admin")
        }
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'trigger':8} {'trials':>6} {'p50 ms':>8} {'max ms':>8}")
    summary = {}
    for trigger, latencies in results.items():
        summary[trigger] = {
            "trials": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000,
        }
        print(
            f"{trigger:8} {len(latencies):>6} {summary[trigger]['p50_ms']:>8.0f} "
            f"{summary[trigger]['max_ms']:>8.0f}"
        )
    write_report(args.out, "reload", {"latency": summary})


if __name__ == "__main__":
    main()
