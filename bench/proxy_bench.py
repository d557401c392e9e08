"""h2load straight to an upstream, through meshnode with and without resilience, and
through HAProxy (the baseline), all in one run.

Two meshnodes run side by side: one forwarding only, one with every
resilience section on (thresholds that never trip); HAProxy from Debian
(one thread, HTTP/2 on both sides) runs beside them when installed. The h2
library's own floor per proxied request (bench/h2_floor.py) is measured in
the same run, and meshnode's CPU per request is given as a multiple of it. Reports requests per
second, p50/p99 latency (from h2load's per-request log) and each meshnode
process's CPU microseconds per request (from /proc), which is steadier than
req/s on a shared machine. Quote ratios within one run: absolute
figures move with the machine's neighbours.

Scenarios: 1 KiB GETs at -c10 -m10, -c50 -m1 and -c1 -m1; 1 MiB down and up;
gRPC unary calls (to a grpcio server); an mTLS hop (two meshnodes, outbound then
inbound, against one HAProxy doing both hops; h2load cannot present a client
certificate, so the first proxy does); churn: nginx recycling each connection after
100 requests, beside the same nginx recycling none, through meshnode and HAProxy
(``retries 3``); RSS with 1,000 idle connections, and
while 50 clients ask for 100 MiB each and never read. At -c1 -m1 two more
proxies run: the full stack with ``[node] busy_poll = "0s"`` (busy polling is on by
default) and HAProxy with ``busy-polling`` (off by default), which spares itself a halted
vCPU's wake-ups as meshnode's default does. At -c10 -m10 two more:
the full stack with ``[tracing]``, sampling none and sampling every request (spans sent
to a local OTLP sink that answers and discards). At the 1 KiB GETs, also ``bare-relay``
(bench/bare_relay.py): meshnode's connections with none of its request path, the
reference for what the request path and the resilience stack cost.

    ./dev bench proxy                 # default scenarios
    ./dev bench proxy --requests 5000 # fewer requests per scenario
    ./dev bench proxy --only c10-m10,c1-m1,idle   # some scenarios only
    git worktree add /tmp/old REV && ./dev bench proxy --before /tmp/old   # before and after
    ./dev bench proxy --interpreter .venv-3.12/bin/python --interpreter .venv-3.13/bin/python

``--interpreter PYTHON`` (repeatable) runs the full stack once more under that interpreter
(a venv with meshnode installed: ``./dev matrix`` makes ``.venv-3.12`` and ``.venv-3.13``),
as ``meshnode+res@3.12`` and so on, alternating with the others: which CPython serves a
request for the least CPU, in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from churn import churn_row
from common import (
    FULL_STACK,
    cheapest,
    free_port,
    start_bare_relay,
    start_haproxy,
    start_meshnode,
    start_nghttpd,
    start_trace_sink,
    write_policies,
    write_report,
)
from h2_floor import floor_us
from scenarios import (
    GRPC_PATH,
    STALLED_CLIENTS,
    grpc_request_file,
    stalled_downloads,
    start_grpc_server,
    start_haproxy_mtls,
    start_mtls_pair,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# name, clients, streams per client, the resource fetched, what is sent
SCENARIOS = [
    ("c10-m10", 10, 10, "1k", "get"),
    ("c50-m1", 50, 1, "1k", "get"),
    ("c1-m1", 1, 1, "1k", "get"),
    ("1MiB-down", 4, 1, "1m", "get"),
    ("1MiB-up", 4, 1, "1k", "upload"),
    ("grpc-unary", 10, 10, GRPC_PATH.lstrip("/"), "grpc"),
]
MTLS = "mtls-c10-m10"
EVERY_SCENARIO = [*(scenario[0] for scenario in SCENARIOS), MTLS, "churn", "idle", "stalled"]
IDLE_CONNECTIONS = 1000
IDLE_HELLO = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS
    + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # SETTINGS ACK
)
STACKS = {"meshnode": "", "meshnode+res": FULL_STACK}
BEFORE = "before+res"  # the full stack on an earlier commit's meshnode (--before)
# At one request at a time, also the full stack with ``[node] busy_poll`` off (it is on by
# default), and HAProxy with its ``busy-polling``: on a VM spinning spares the wake-ups of a
# halted vCPU (docs/operations.md: Busy polling).
BUSY_POLL_OFF = "0s"
BUSY_POLL_STACK = "meshnode+res-bp"
HAPROXY_BUSY_POLLING = "haproxy+bp"
# At -c10 -m10, also the full stack with [tracing]: every request sampled out (its cost
# when on but not sampling), and every request sampled (spans sent to a local sink).
TRACED_OUT, TRACED_ALL = "meshnode+res+t0", "meshnode+res+t1"
TRACING = {TRACED_OUT: 0.0, TRACED_ALL: 1.0}
# The least a proxy on meshnode's connections does (bench/bare_relay.py), at the 1 KiB GETs:
# the node less this is the request path's and the resilience stack's cost.
BARE_RELAY = "bare-relay"
# The stacks that run in some scenarios only.
ONLY_IN = {
    BARE_RELAY: {"c10-m10", "c50-m1", "c1-m1"},
    BUSY_POLL_STACK: {"c1-m1"},
    HAPROXY_BUSY_POLLING: {"c1-m1"},
    TRACED_OUT: {"c10-m10"},
    TRACED_ALL: {"c10-m10"},
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def h2load(
    url: str,
    requests: int,
    clients: int,
    streams: int,
    authority: str,
    extra: tuple[str, ...] = (),
) -> dict[str, float]:
    """``extra``: more h2load options (a body to send, headers)."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        out = subprocess.run(
            [
                "h2load",
                "-n",
                str(requests),
                "-c",
                str(clients),
                "-m",
                str(streams),
                "-H",
                f":authority: {authority}",
                *extra,
                "--log-file",
                log.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        durations = sorted(int(line.split()[2]) for line in log if line.strip())
    done = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out
    )
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert done and rate, out
    quantiles = statistics.quantiles(durations, n=100)
    return {
        "req_per_s": float(rate.group(1)),
        "p50_us": quantiles[49],
        "p99_us": quantiles[98],
        "succeeded": int(done.group(1)),
        "failed": int(done.group(2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="per scenario (max 200000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="per stack; the one with the least CPU is kept"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout of an earlier commit (git worktree add DIR REV): its meshnode runs the"
        f" full stack as {BEFORE!r}, alternating with this one's",
    )
    parser.add_argument(
        "--interpreter",
        action="append",
        default=[],
        type=Path,
        help="another interpreter (a venv's python) to run the full stack under; repeatable",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios to run, of: {', '.join(EVERY_SCENARIO)} (default all)",
    )
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else set(EVERY_SCENARIO)
    if chosen - set(EVERY_SCENARIO):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(chosen - set(EVERY_SCENARIO)))}")
    requests = min(args.requests, 200_000)
    rounds = max(1, min(args.rounds, 10))
    for tool in ("h2load", "nghttpd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: ./dev bench installs it")

    work = Path(tempfile.mkdtemp(prefix="meshnode-bench-"))
    (work / "htdocs").mkdir()
    (work / "htdocs" / "1k").write_bytes(b"k" * 1024)
    (work / "htdocs" / "1m").write_bytes(b"m" * 1024 * 1024)
    with (work / "htdocs" / "100m").open("wb") as big:
        big.truncate(100 * 1024 * 1024)  # sparse: served as zeros
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle connections need it
    upstream, upstream_port = start_nghttpd(work / "htdocs")
    grpc_server, grpc_port = start_grpc_server()
    sends = {
        "get": (),
        "upload": ("-d", str(work / "htdocs" / "1m")),
        "grpc": (
            "-d",
            str(grpc_request_file(work)),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ),
    }
    endpoints = {"web": [f"127.0.0.1:{upstream_port}"], "grpc": [f"127.0.0.1:{grpc_port}"]}
    nodes = {}
    for stack, extra in STACKS.items():
        outbound_port, admin_port = free_port(), free_port()
        write_policies(work / stack, outbound_port, admin_port, endpoints, extra)
        nodes[stack] = (start_meshnode(work / stack, outbound_port), outbound_port)
    outbound_port, admin_port = free_port(), free_port()
    write_policies(
        work / BUSY_POLL_STACK,
        outbound_port,
        admin_port,
        endpoints,
        FULL_STACK,
        node_settings=f'busy_poll = "{BUSY_POLL_OFF}"',
    )
    nodes[BUSY_POLL_STACK] = (start_meshnode(work / BUSY_POLL_STACK, outbound_port), outbound_port)
    sink, sink_endpoint = start_trace_sink()
    for stack, ratio in TRACING.items():
        outbound_port, admin_port = free_port(), free_port()
        tracing = f'[tracing]\nendpoint = "{sink_endpoint}"\nsample_ratio = {ratio}\n'
        write_policies(
            work / stack, outbound_port, admin_port, endpoints, FULL_STACK, node_sections=tracing
        )
        nodes[stack] = (start_meshnode(work / stack, outbound_port), outbound_port)
    if args.before is not None:
        outbound_port, admin_port = free_port(), free_port()
        write_policies(work / BEFORE, outbound_port, admin_port, endpoints, FULL_STACK)
        node = start_meshnode(work / BEFORE, outbound_port, source=args.before)
        nodes[BEFORE] = (node, outbound_port)
    for interpreter in args.interpreter:
        stack = f"meshnode+res@{interpreter_version(interpreter)}"
        outbound_port, admin_port = free_port(), free_port()
        write_policies(work / stack, outbound_port, admin_port, endpoints, FULL_STACK)
        node = start_meshnode(work / stack, outbound_port, python=interpreter)
        nodes[stack] = (node, outbound_port)
    bare_port = free_port()
    nodes[BARE_RELAY] = (start_bare_relay(bare_port, upstream_port), bare_port)
    only_in = {stack: ONLY_IN[stack] for stack in (BUSY_POLL_STACK, *TRACING, BARE_RELAY)}
    if shutil.which("haproxy") is not None:  # ./dev bench installs it
        nodes["haproxy"] = start_haproxy(work, upstream_port, grpc_port)
        # Started for its own runs only: it always spins.
        only_in[HAPROXY_BUSY_POLLING] = ONLY_IN[HAPROXY_BUSY_POLLING]
    mtls_nodes, mtls_port = start_mtls_pair(work, upstream_port)
    mtls_haproxy = start_haproxy_mtls(work, upstream_port)
    floor = floor_us()
    layer = h2_layer_us()
    results: dict[str, dict[str, object]] = {}
    try:
        for _, port in nodes.values():
            h2load(f"http://127.0.0.1:{port}/1k", 2000, 10, 10, "web")  # warm up
        for name, clients, streams, resource_name, kind in SCENARIOS:
            if name not in chosen:
                continue
            count = requests if streams > 1 else max(requests // 4, 1000)
            if "MiB" in name:
                count = max(requests // 100, 100)
            authority, direct_port = (
                ("grpc", grpc_port) if kind == "grpc" else ("web", upstream_port)
            )
            extra_options = sends[kind]
            stacks = [stack for stack in nodes if stack not in only_in]
            stacks += [stack for stack, scenarios in only_in.items() if name in scenarios]
            row: dict[str, object] = {"requests": count}
            row["direct"] = h2load(
                f"http://127.0.0.1:{direct_port}/{resource_name}",
                count,
                clients,
                streams,
                authority,
                extra_options,
            )
            runs: dict[str, list[dict[str, float]]] = {stack: [] for stack in stacks}
            for _ in range(rounds):  # alternate the stacks, so drift on the machine hits both
                for stack in stacks:
                    if stack == HAPROXY_BUSY_POLLING:
                        node, port = start_haproxy(work, upstream_port, busy_polling=True)
                        h2load(f"http://127.0.0.1:{port}/1k", 500, 1, 1, "web")  # warm up
                    else:
                        node, port = nodes[stack]
                    before = cpu_seconds(node.pid)
                    url = f"http://127.0.0.1:{port}/{resource_name}"
                    proxied = h2load(url, count, clients, streams, authority, extra_options)
                    cpu_us = (cpu_seconds(node.pid) - before) / count * 1e6
                    runs[stack].append(
                        {**proxied, "cpu_us_per_request": cpu_us, "rss_kib": rss_kib(node.pid)}
                    )
                    if stack == HAPROXY_BUSY_POLLING:
                        node.terminate()
                        node.wait(30)
            for stack in stacks:
                row[stack] = cheapest(runs[stack])
            results[name] = row
        if MTLS in chosen:
            results[MTLS] = mtls_row(
                requests, upstream_port, mtls_nodes, mtls_port, mtls_haproxy, rounds
            )
        churn: dict[str, object] = {}
        if "churn" in chosen:
            churn = churn_row(work, requests, rounds, h2load, cpu_seconds)
        steady = {stack: node for stack, node in nodes.items() if stack not in only_in}
        idle: dict[str, tuple[int, int]] = {}
        if "idle" in chosen:
            idle = {stack: idle_rss(node.pid, port) for stack, (node, port) in steady.items()}
        stalled: dict[str, tuple[int, int]] = {}
        if "stalled" in chosen:
            stalled = {
                stack: stalled_downloads(port, "web", "/100m", lambda pid=node.pid: rss_kib(pid))
                for stack, (node, port) in steady.items()
            }
    finally:
        for node in [*(node for node, _ in nodes.values()), *mtls_nodes, mtls_haproxy[0]]:
            node.terminate()
            node.wait(30)
        upstream.terminate()
        upstream.wait(30)
        grpc_server.stop(None)
        sink.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    header = ("scenario", "path", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "failed")
    print("{:10} {:20} {:>9} {:>9} {:>9} {:>11} {:>7}".format(*header))
    for name, row in results.items():
        for path in ("direct", *nodes_order(results)):
            if path not in row:
                continue
            figures = row[path]
            assert isinstance(figures, dict)
            cpu = f"{figures['cpu_us_per_request']:.0f}" if "cpu_us_per_request" in figures else ""
            print(
                f"{name:10} {path:20} {figures['req_per_s']:>9.0f} {figures['p50_us']:>9.0f} "
                f"{figures['p99_us']:>9.0f} {cpu:>11} {figures['failed']:>7}"
            )
        if name == "c1-m1":
            direct_p50 = row["direct"]["p50_us"]  # type: ignore[index]
            added = {
                stack: row[stack]["p50_us"] - direct_p50  # type: ignore[index]
                for stack in nodes_order(results)
                if stack in row
            }
            print(
                f"{'':10} p50 added over direct: "
                + ", ".join(f"{stack} {value:.0f} µs" for stack, value in added.items())
            )
        if name != "c10-m10":
            continue
        plain, full = (row[stack]["cpu_us_per_request"] for stack in STACKS)  # type: ignore[index]
        print(
            f"{'':10} resilience stack costs {(full - plain) / plain * 100:+.1f} % CPU per request;"
            f" meshnode+res is {full / floor:.2f}x h2's floor of {floor:.0f} µs"
        )
        print(
            f"{'':10} of which meshnode's codec (the same four steps) is"
            f" {layer:.0f} µs ({layer / full * 100:.0f} %)"
        )
        if BARE_RELAY in row:
            bare = row[BARE_RELAY]["cpu_us_per_request"]  # type: ignore[index]
            path_cost = full - bare
            print(
                f"{'':10} {BARE_RELAY} is {bare / floor:.2f}x the floor: the request path and"
                f" the resilience stack take {path_cost:.0f} µs ({path_cost / full * 100:.0f} %)"
            )
        if BEFORE in row:
            before = row[BEFORE]["cpu_us_per_request"]  # type: ignore[index]
            print(f"{'':10} {BEFORE} is {before / floor:.2f}x the floor")
        for stack in (stack for stack in nodes_order(results) if "@" in stack and stack in row):
            other = row[stack]["cpu_us_per_request"]  # type: ignore[index]
            print(
                f"{'':10} {stack} takes {other / full:.2f}x the CPU of meshnode+res"
                f" on {platform.python_version()}"
            )
        for stack, ratio in TRACING.items():
            if stack in row:
                traced = row[stack]["cpu_us_per_request"]  # type: ignore[index]
                print(
                    f"{'':10} [tracing] sample_ratio = {ratio:g} costs"
                    f" {(traced - full) / full * 100:+.1f} % CPU per request over meshnode+res"
                )
    for path, figures in churn.items():
        if isinstance(figures, dict):
            print(
                f"churn      {path:15} {figures['req_per_s']:>9.0f} {figures['p50_us']:>9.0f} "
                f"{figures['p99_us']:>9.0f} {figures['cpu_us_per_request']:>11.0f} "
                f"{figures['failed']:>7}"
            )
    if churn:
        churning, steady_rate = (
            churn[f"meshnode {upstream}"]["req_per_s"]  # type: ignore[index]
            for upstream in ("churn", "steady")
        )
        print(
            f"{'':10} meshnode keeps {churning / steady_rate * 100:.0f} % of its req/s when its"
            " upstream sends GOAWAY every 100 requests"
        )
    for stack, (before, during) in idle.items():
        print(
            f"{IDLE_CONNECTIONS} idle connections  {stack:13} RSS {before / 1024:.0f} MiB -> "
            f"{during / 1024:.0f} MiB"
        )
    for stack, (before, during) in stalled.items():
        print(
            f"{STALLED_CLIENTS} stalled 100 MiB downloads {stack:13} RSS {before / 1024:.0f} MiB "
            f"-> {during / 1024:.0f} MiB"
        )
    report = {
        "idle_rss_kib": {stack: {"before": b, "idle": d} for stack, (b, d) in idle.items()},
        "stalled_rss_kib": {
            stack: {"before": b, "stalled": d} for stack, (b, d) in stalled.items()
        },
        "h2_floor_us": floor,
        "h2_layer_us": layer,
        "scenarios": results,
        "churn": churn,
    }
    target = write_report(args.out, "proxy", report)
    if results:  # not when only memory was measured (--only idle,stalled)
        chart(results, target.with_suffix(".png"))
        print(f"and {target.with_suffix('.png')}")


def h2_layer_us(requests: int = 20000) -> float:
    """``bench/h2_floor.py --meshnode``, in its own process (as the floor is measured alone)."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "h2_floor.py"),
            "--meshnode",
            f"--requests={requests}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.rsplit(":", 1)[1].split()[0])


def chart(results: dict[str, dict[str, object]], target: Path) -> None:
    """Throughput and p50 latency per scenario and path, side by side (log scales: direct
    and HAProxy are two orders of magnitude from meshnode)."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it (the bench extra)

    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    paths = ["direct", *nodes_order(results)]
    figure, (throughput, latency) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(paths)
    for offset, path in enumerate(paths):
        positions = [i + offset * width for i in range(len(results))]
        rows = [results[name].get(path, {}) for name in results]
        throughput.bar(positions, [r.get("req_per_s", 0) for r in rows], width, label=path)
        latency.bar(positions, [r.get("p50_us", 0) / 1000 for r in rows], width, label=path)
    for axes, title in ((throughput, "requests per second"), (latency, "p50 latency (ms)")):
        axes.set_title(title)
        axes.set_yscale("log")
        axes.set_xticks([i + width * (len(paths) - 1) / 2 for i in range(len(results))])
        axes.set_xticklabels(list(results), rotation=20)
    throughput.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(target, dpi=100)


def mtls_row(
    requests: int,
    upstream_port: int,
    pair: list[subprocess.Popen[bytes]],
    pair_port: int,
    haproxy: tuple[subprocess.Popen[bytes], int],
    rounds: int,
) -> dict[str, object]:
    """1 KiB GETs at -c10 -m10 across an mTLS hop: two meshnodes (outbound, then inbound; the
    CPU is both) against one HAProxy doing both hops, and straight to nghttpd."""
    row: dict[str, object] = {"requests": requests}
    row["direct"] = h2load(f"http://127.0.0.1:{upstream_port}/1k", requests, 10, 10, "web")
    paths = {
        "meshnode": ([node.pid for node in pair], pair_port),
        "haproxy": ([haproxy[0].pid], haproxy[1]),
    }
    for _, port in paths.values():
        h2load(f"http://127.0.0.1:{port}/1k", 2000, 10, 10, "web")  # warm up, handshakes
    runs: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path, (pids, port) in paths.items():
            before = sum(cpu_seconds(pid) for pid in pids)
            proxied = h2load(f"http://127.0.0.1:{port}/1k", requests, 10, 10, "web")
            cpu_us = (sum(cpu_seconds(pid) for pid in pids) - before) / requests * 1e6
            runs[path].append({**proxied, "cpu_us_per_request": cpu_us})
    for path, measured in runs.items():
        row[path] = cheapest(measured)
    return row


def idle_rss(pid: int, port: int) -> tuple[int, int]:
    """The proxy's RSS before, and while ``IDLE_CONNECTIONS`` HTTP/2 connections sit idle."""
    before = rss_kib(pid)
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(IDLE_HELLO)
            idle.append(connection)
        time.sleep(2)
        return before, rss_kib(pid)
    finally:
        for connection in idle:
            connection.close()


def interpreter_version(python: Path) -> str:
    """``3.12.1``: what ``python`` is, as a stack's name says it."""
    return subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def nodes_order(results: dict[str, dict[str, object]]) -> list[str]:
    """The proxies measured in any scenario, meshnode's stacks first, in a stable order."""
    measured = {path for row in results.values() for path in row}
    interpreters = sorted(path for path in measured if "@" in path)
    order = (
        *STACKS,
        *interpreters,
        BUSY_POLL_STACK,
        *TRACING,
        BEFORE,
        BARE_RELAY,
        "haproxy",
        HAPROXY_BUSY_POLLING,
    )
    return [path for path in order if path in measured]


if __name__ == "__main__":
    main()
