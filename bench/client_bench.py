"""The mesh client's cost per call: embedded, sidecar, and the same client straight to the
upstream (no mesh at all), in the same run.

1 KiB GETs to nghttpd: sequential calls (latency p50/p99) and calls from
``--tasks`` concurrent tasks (calls a second). CPU per call counts this process
(the client) plus, in sidecar mode, the meshnode process from /proc.

    ./dev bench client
    ./dev bench client --calls 5000 --tasks 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio
from common import free_port, start_meshnode, start_nghttpd, write_policies, write_report
from proxy_bench import cpu_seconds

from meshnode.client import MeshClient, open_mesh_client

Opener = Callable[[], AbstractAsyncContextManager[MeshClient]]


async def run_calls(mesh: MeshClient, calls: int, tasks: int) -> dict[str, float]:
    for _ in range(50):  # warm: connections open, caches filled
        (await mesh.get("web", "/1k")).raise_for_status()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        (await mesh.get("web", "/1k")).raise_for_status()
        latencies.append(time.perf_counter() - started)
    latencies.sort()

    async def worker(count: int) -> None:
        for _ in range(count):
            (await mesh.get("web", "/1k")).raise_for_status()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker, calls // tasks)
    elapsed = time.perf_counter() - started
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "calls_per_second": (calls // tasks) * tasks / elapsed,
    }


async def measure(open_client: Opener, calls: int, tasks: int, node_pid: int | None) -> dict:
    node_before = cpu_seconds(node_pid) if node_pid else 0.0
    own_before = time.process_time()
    async with open_client() as mesh:
        figures = await run_calls(mesh, calls, tasks)
    cpu = time.process_time() - own_before
    if node_pid:
        cpu += cpu_seconds(node_pid) - node_before
    total_calls = 50 + calls + (calls // tasks) * tasks
    return {**figures, "cpu_us_per_call": cpu / total_calls * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "docroot").mkdir()
        (work / "docroot" / "1k").write_bytes(b"x" * 1024)
        server, upstream_port = start_nghttpd(work / "docroot")
        outbound_port, admin_port = free_port(), free_port()
        policies = work / "policies"
        write_policies(policies, outbound_port, admin_port, {"web": [f"127.0.0.1:{upstream_port}"]})
        node = start_meshnode(policies, outbound_port)
        try:
            openers: dict[str, tuple[Opener, int | None]] = {
                "direct": (
                    lambda: open_mesh_client("bench", sidecar=f"127.0.0.1:{upstream_port}"),
                    None,
                ),
                "embedded": (lambda: open_mesh_client("bench", policies=policies), None),
                "sidecar": (
                    lambda: open_mesh_client(
                        "bench",
                        sidecar=f"127.0.0.1:{outbound_port}",
                        admin=f"http://127.0.0.1:{admin_port}",
                    ),
                    node.pid,
                ),
            }
            results = {
                name: trio.run(measure, opener, args.calls, args.tasks, pid)
                for name, (opener, pid) in openers.items()
            }
        finally:
            node.terminate()
            server.terminate()
            node.wait()
            server.wait()
    print(f"{'mode':10} {'p50 µs':>8} {'p99 µs':>8} {'calls/s':>9} {'CPU µs/call':>12}")
    for name, figures in results.items():
        print(
            f"{name:10} {figures['p50_us']:8.0f} {figures['p99_us']:8.0f} "
            f"{figures['calls_per_second']:9.0f} {figures['cpu_us_per_call']:12.0f}"
        )
    write_report(
        Path(__file__).parent / "results", "client", {"args": vars(args), "results": results}
    )


if __name__ == "__main__":
    main()
