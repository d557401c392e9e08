"""The adaptive concurrency limit against an upstream in its own process that has eight
workers (20 ms a request; the rest queue), offered three times what it can serve by h2load
at up to 128 concurrent streams.

The offered load is a rate (``--rps``), not a closed loop: a client that sends the next
request the instant a refusal comes back turns the test into one of the node's CPU (on
this 2-core machine the refusals then take a whole core and every admitted request waits
for the event loop; docs/adaptive.md has those figures too). Latencies are read from the
second second on, once the limit has found the upstream.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.upstream_processes import (
    Paced,
    PythonUpstream,
    hypercorn,
    one_at_a_time,
    paced_h2load,
)

pytestmark = pytest.mark.integration

WORK = 0.020  # seconds a request takes on a worker
WORKERS = 8
CAPACITY = WORKERS / WORK  # requests a second
CLIENTS, STREAMS = 8, 16  # up to 128 streams at once
OFFERED = 3 * CAPACITY
SECONDS = 5


@pytest.fixture
def upstream() -> Iterator[PythonUpstream]:
    started = hypercorn(1_000_000, capacity=WORKERS)
    yield started
    started.stop()


def url(node: NodeProcess) -> str:
    return f"http://{node.outbound}/work/{int(WORK * 1000)}"


def drive(node: NodeProcess, *, seconds: int = SECONDS) -> Paced:
    return paced_h2load(
        url(node), "api", rate=OFFERED, clients=CLIENTS, streams=STREAMS, seconds=seconds
    )


def no_load_latency(node: NodeProcess) -> float:
    """One request at a time through the node: the upstream's 20 ms and the path's own."""
    return one_at_a_time(url(node), "api")


def limit_of(node: NodeProcess) -> int:
    found: int = json.loads(node.admin_page("/admin/upstreams"))["upstreams"]["api"][
        "concurrency_limit"
    ]["limit"]
    return found


def test_without_a_limit_admitted_requests_queue_for_hundreds_of_ms(
    tmp_path, node_process, upstream
) -> None:
    node = node_process(
        write_policies(tmp_path / "p", {"api": upstream_toml("api", upstream.address)})
    )
    driven = drive(node)
    assert driven.refused == []
    assert statistics.median(driven.served) > 0.2  # 128 streams wait 16 turns of 20 ms


def limited_node(tmp_path, node_process, upstream, algorithm: str) -> NodeProcess:
    policy = upstream_toml(
        "api", upstream.address, extra=f'[concurrency_limit]\nalgorithm = "{algorithm}"\n'
    )
    node: NodeProcess = node_process(write_policies(tmp_path / "p", {"api": policy}))
    return node


def holds(driven: Paced, no_load: float, latency_factor: float) -> list[str]:
    """What the limit must give (none of it, a list of what it missed): goodput of at
    least 70 % of the upstream's capacity, admitted requests' p50 under ``latency_factor``
    times the no-load latency, and the rest refused fast (a 503 that never reached the
    upstream: a third of an admitted request's time at most)."""
    served, refused = statistics.median(driven.served), statistics.median(driven.refused)
    missed = []
    if driven.served_per_second < 0.7 * CAPACITY:
        missed.append(f"goodput {driven.served_per_second:.0f}/s of {CAPACITY:.0f}")
    if served >= latency_factor * no_load:
        missed.append(f"p50 {served * 1000:.1f} ms, no-load {no_load * 1000:.1f} ms")
    if len(driven.refused) <= len(driven.served) or refused >= served / 3:
        missed.append(f"{len(driven.refused)} refused, p50 {refused * 1000:.1f} ms")
    return missed


def limit_holds(node: NodeProcess, latency_factor: float) -> None:
    """The limit holds over one of two windows of SECONDS. This 2-core VM has bursts of CPU
    steal (a quarter of a core seen) that can starve the upstream or the node for part of a
    window; a limiter that does not work misses both."""
    no_load = no_load_latency(node)
    missed = holds(drive(node), no_load, latency_factor)
    if missed:
        missed = holds(drive(node), no_load, latency_factor)
    assert not missed, missed


def test_vegas_keeps_latency_under_twice_the_no_load_and_sheds_the_rest_fast(
    tmp_path, node_process, upstream
) -> None:
    node = limited_node(tmp_path, node_process, upstream, "vegas")
    limit_holds(node, 2.0)
    assert limit_of(node) < 128
    page = node.admin_page("/")
    assert re.search(r"<dd class=\"concurrency-limit\">\d+ \(vegas\), \d+ in flight", page)


def test_gradient_keeps_throughput_and_sheds_the_rest_fast(
    tmp_path, node_process, upstream
) -> None:
    """GradientLimit's balance point is its rtt_tolerance (1.5) over the no-load RTT, plus a
    queue of the limit's square root: about twice the no-load latency by design."""
    limit_holds(limited_node(tmp_path, node_process, upstream, "gradient"), 3.0)


def test_the_vegas_limit_rises_when_the_upstream_can_take_more(
    tmp_path, node_process, upstream
) -> None:
    node = limited_node(tmp_path, node_process, upstream, "vegas")
    before = drive(node, seconds=3)
    subprocess.run(
        [
            require("curl"),
            "-s",
            "--http2-prior-knowledge",
            f"http://{upstream.address}/_capacity/32",
        ],
        check=True,
        timeout=10,
        capture_output=True,
    )
    after = drive(node, seconds=3)
    # Four times the workers: the limit rises, and the throughput with it (the limit read at
    # one instant moves too much to compare two of them).
    assert after.served_per_second > 1.5 * before.served_per_second
