"""What busy polling costs where it cannot help: a node at rest, and one at 100 requests a
second, with ``[node] busy_poll`` off and on, in alternating rounds.

The full resilience stack in front of nghttpd. For each setting: the node's CPU over
``--idle`` seconds with no traffic (after a warm-up), then its CPU per request and
h2load's mean latency for 1,000 requests paced at 100 a second (``--rps``: each request
finds the node asleep, the case where a spin costs most and saves least). The issue's
bar for busy polling on by default: CPU at rest unchanged, and at 100 req/s no more than
1.2x without it.

    ./dev bench busy_poll
    ./dev bench busy_poll --settings 0 50us 200us --rounds 3
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    FULL_STACK,
    free_port,
    start_meshnode,
    start_nghttpd,
    write_policies,
    write_report,
)
from proxy_bench import cpu_seconds

PACED = 1000  # requests, at RATE a second
RATE = 100


def measure(work: Path, upstream_port: int, setting: str, idle: float) -> dict[str, object]:
    outbound_port, admin_port = free_port(), free_port()
    policies = work / f"busy-poll-{setting}-{time.monotonic_ns()}"
    write_policies(
        policies,
        outbound_port,
        admin_port,
        {"web": [f"127.0.0.1:{upstream_port}"]},
        FULL_STACK,
        node_settings=f'busy_poll = "{setting}"' if setting != "0" else "",
    )
    node = start_meshnode(policies, outbound_port)
    url = f"http://127.0.0.1:{outbound_port}/1k"
    try:
        h2load(url, "-n", "500")  # warm up
        time.sleep(1.0)
        before = cpu_seconds(node.pid)
        time.sleep(idle)
        at_rest = cpu_seconds(node.pid) - before
        before = cpu_seconds(node.pid)
        out = h2load(url, "-n", str(PACED), "--rps", str(RATE))
        paced = cpu_seconds(node.pid) - before
    finally:
        node.terminate()
        node.wait(30)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms)", out)
    assert mean is not None, out
    return {
        "busy_poll": setting,
        "idle_core_percent": at_rest / idle * 100,
        "cpu_us_per_request": paced / PACED * 1e6,
        "mean_latency_us": float(mean.group(1)) * (1000 if mean.group(2) == "ms" else 1),
    }


def h2load(url: str, *options: str) -> str:
    return subprocess.run(
        ["h2load", "-c", "1", *options, "-H", ":authority: web", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["0", "50us"], help="busy_poll values")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (max 5)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds at rest (max 60)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshnode-busy-poll-bench-"))
    (work / "htdocs").mkdir()
    (work / "htdocs" / "1k").write_bytes(b"k" * 1024)
    upstream, upstream_port = start_nghttpd(work / "htdocs")
    runs = []
    try:
        for _ in range(min(args.rounds, 5)):
            for setting in args.settings:
                row = measure(work, upstream_port, setting, min(args.idle, 60.0))
                runs.append(row)
                print(
                    f"busy_poll={setting:<6} at rest {row['idle_core_percent']:5.2f} % of a core"
                    f"  at {RATE} req/s {row['cpu_us_per_request']:6.0f} µs CPU/request,"
                    f" mean {row['mean_latency_us']:6.0f} µs"
                )
    finally:
        upstream.terminate()
    write_report(args.out, "busy_poll", {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
