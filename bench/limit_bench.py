"""Goodput and latency with and without the adaptive concurrency limit, in one run.

An upstream in its own process (Hypercorn, tests/support/recycling_upstream.py) has 8
workers of 20 ms: 400 requests a second, the rest queue. h2load offers three times that
at up to 128 concurrent streams (``--rps``), through a node without ``[concurrency_limit]``
and through one with each algorithm, in alternating rounds. Reported per run: the no-load
latency through that node (one request at a time), 200s a second (goodput, and its share
of the upstream's capacity), p50 and p99 of the 200s from the second second on, 503s a
second, and the node's CPU per request.

    ./dev bench limit
    ./dev bench limit --rounds 3 --algorithms vegas gradient2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, start_meshnode, write_policies, write_report
from proxy_bench import cpu_seconds

sys.path.insert(0, str(Path(__file__).parent.parent))  # the tests' upstream and load helpers

from tests.support.upstream_processes import PythonUpstream, hypercorn, one_at_a_time, paced_h2load

WORK_MS = 20
WORKERS = 8
CAPACITY = WORKERS * 1000 / WORK_MS
CLIENTS, STREAMS = 8, 16


def measure(upstream: PythonUpstream, algorithm: str, seconds: int, offered: float) -> dict:
    outbound_port, admin_port = free_port(), free_port()
    policies = Path(tempfile.mkdtemp(prefix=f"meshnode-limit-bench-{algorithm}-"))
    extra = "" if algorithm == "none" else f'[concurrency_limit]\nalgorithm = "{algorithm}"\n'
    write_policies(policies, outbound_port, admin_port, {"api": [upstream.address]}, extra)
    node = start_meshnode(policies, outbound_port)
    url = f"http://127.0.0.1:{outbound_port}/work/{WORK_MS}"
    try:
        no_load = one_at_a_time(url, "api")
        before, started = cpu_seconds(node.pid), time.monotonic()
        paced = paced_h2load(
            url, "api", rate=offered, clients=CLIENTS, streams=STREAMS, seconds=seconds
        )
        used, elapsed = cpu_seconds(node.pid) - before, time.monotonic() - started
    finally:
        node.terminate()
        node.wait(30)
    served = sorted(paced.served)
    answered = paced.served_per_second * seconds + len(paced.refused)
    return {
        "algorithm": algorithm,
        "no_load_ms": no_load * 1000,
        "goodput": paced.served_per_second,
        "capacity_share": paced.served_per_second / CAPACITY,
        "p50_ms": statistics.median(served) * 1000,
        "p99_ms": served[int(len(served) * 0.99) - 1] * 1000,
        "refused_per_s": len(paced.refused) / (seconds - 1),
        "cpu_us_per_request": used * 1e6 / max(1.0, answered),
        "node_cores": used / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (max 5)")
    parser.add_argument("--seconds", type=int, default=5, help="per run (2 to 30)")
    parser.add_argument("--offered", type=float, default=3.0, help="x the upstream's capacity")
    parser.add_argument(
        "--algorithms", nargs="+", default=["none", "vegas", "gradient", "gradient2"]
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 2), 30)
    offered = min(args.offered, 10.0) * CAPACITY
    upstream = hypercorn(1_000_000, capacity=WORKERS)
    runs = []
    try:
        for _ in range(min(args.rounds, 5)):
            for algorithm in args.algorithms:
                row = measure(upstream, algorithm, seconds, offered)
                runs.append(row)
                print(
                    f"{algorithm:<10} no-load {row['no_load_ms']:5.1f} ms"
                    f"  goodput {row['goodput']:5.0f}/s ({row['capacity_share']:4.0%})"
                    f"  p50 {row['p50_ms']:6.1f} ms ({row['p50_ms'] / row['no_load_ms']:4.1f}x)"
                    f"  p99 {row['p99_ms']:6.1f} ms  refused {row['refused_per_s']:5.0f}/s"
                    f"  {row['cpu_us_per_request']:4.0f} µs CPU/answer"
                    f" on {row['node_cores']:.2f} cores"
                )
    finally:
        upstream.stop()
    write_report(args.out, "limit", {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
