"""Throughput of one worker against two (``serve --workers``), in the same run.

h2load drives 1 KiB GETs through meshnode to nghttpd, first with one worker,
then with two, then one again (so drift on the machine shows). Reports req/s,
p50/p99 and the CPU microseconds per request of every meshnode process (parent
and workers) from /proc. The load generator and the upstream share the machine:
on two cores, two workers compete with them for the second core. So the run also
reports how many cores meshnode kept busy, and h2load's and nghttpd's CPU per
request, and gives the scaling two ways: throughput as measured, and with the
load generator accounted for, as the throughput two workers give per core they
use against one worker's (two cores of it is what a machine with cores to spare
for the load generator would see).

    ./dev bench workers
    ./dev bench workers --requests 50000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port, start_meshnode, start_nghttpd, write_policies, write_report
from proxy_bench import cpu_seconds, h2load


def node_pids(node: subprocess.Popen[bytes], admin_port: int, workers: int) -> list[int]:
    if workers == 1:
        return [node.pid]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/admin/workers") as answer:
        listed = json.load(answer)["workers"]
    return [node.pid, *(worker["pid"] for worker in listed)]


def measure(
    work: Path, upstream: subprocess.Popen[bytes], upstream_port: int, workers: int, requests: int
) -> dict[str, float]:
    outbound_port, admin_port = free_port(), free_port()
    policies = work / f"workers-{workers}-{time.monotonic_ns()}"
    write_policies(policies, outbound_port, admin_port, {"web": [f"127.0.0.1:{upstream_port}"]}, "")
    node = start_meshnode(policies, outbound_port, "--workers", str(workers))
    try:
        time.sleep(1.0)  # every worker up (the port answers as soon as the first is)
        url = f"http://127.0.0.1:{outbound_port}/1k"
        h2load(url, 4000, 16, 10, "web")  # warm up
        pids = node_pids(node, admin_port, workers)
        before = sum(cpu_seconds(pid) for pid in pids)
        upstream_before = cpu_seconds(upstream.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        result = h2load(url, requests, 16, 10, "web")
        elapsed = time.monotonic() - started
        used = sum(cpu_seconds(pid) for pid in pids) - before
        finished = resource.getrusage(resource.RUSAGE_CHILDREN)
        h2load_cpu = (finished.ru_utime + finished.ru_stime) - (
            children.ru_utime + children.ru_stime
        )
        result["cpu_us_per_request"] = used * 1e6 / requests
        result["meshnode_cores"] = used / elapsed
        result["load_cpu_us_per_request"] = (
            (h2load_cpu + cpu_seconds(upstream.pid) - upstream_before) * 1e6 / requests
        )
        return result
    finally:
        node.terminate()
        node.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30000, help="per run (max 200000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    requests = min(args.requests, 200_000)
    work = Path(tempfile.mkdtemp(prefix="meshnode-workers-bench-"))
    (work / "htdocs").mkdir()
    (work / "htdocs" / "1k").write_bytes(b"k" * 1024)
    upstream, upstream_port = start_nghttpd(work / "htdocs")
    runs = []
    try:
        for workers in (1, 2, 1, 2):
            row = measure(work, upstream, upstream_port, workers, requests)
            runs.append({"workers": workers, **row})
            print(
                f"workers={workers}  {row['req_per_s']:>8.0f} req/s  p50 {row['p50_us']:>7.0f} µs"
                f"  p99 {row['p99_us']:>7.0f} µs  {row['cpu_us_per_request']:>5.0f} µs CPU/req"
                f" on {row['meshnode_cores']:.2f} cores  h2load+nghttpd"
                f" {row['load_cpu_us_per_request']:>4.0f} µs/req  failed {row['failed']}"
            )
    finally:
        upstream.terminate()
    ratio = _mean(runs, 2, "req_per_s") / _mean(runs, 1, "req_per_s")
    per_core = {
        workers: _mean(runs, workers, "req_per_s") / _mean(runs, workers, "meshnode_cores")
        for workers in (1, 2)
    }
    accounted = 2 * per_core[2] / per_core[1]
    print(f"two workers / one: {ratio:.2f}x throughput on {os.cpu_count()} cores")
    print(
        f"with the load generator accounted for: {accounted:.2f}x (req/s per busy meshnode core:"
        f" {per_core[1]:.0f} with one worker, {per_core[2]:.0f} with two)"
    )
    write_report(args.out, "workers", {"runs": runs, "ratio": ratio, "accounted_ratio": accounted})


def _mean(runs: list[dict[str, float]], workers: int, key: str) -> float:
    values = [run[key] for run in runs if run["workers"] == workers]
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
