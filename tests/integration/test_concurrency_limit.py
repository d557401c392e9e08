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
import tempfile
from collections.abc import Iterator

import attrs
import pytest

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.upstream_processes import PythonUpstream, hypercorn

pytestmark = pytest.mark.integration

WORK = 0.020  # seconds a request takes on a worker
WORKERS = 8
CAPACITY = WORKERS / WORK  # requests a second
CLIENTS, STREAMS = 8, 16  # up to 128 streams at once
OFFERED = 3 * CAPACITY
SECONDS = 5
WARM_UP = 1.0  # seconds left out of the latencies


@pytest.fixture
def upstream() -> Iterator[PythonUpstream]:
    started = hypercorn(1_000_000, capacity=WORKERS)
    yield started
    started.stop()


@attrs.frozen
class Driven:
    served: list[float]  # seconds each 200 took, after the warm-up
    refused: list[float]  # idem, the 503s
    served_per_second: float  # over the whole run


def drive(node: NodeProcess, *, clients: int = CLIENTS, seconds: int = SECONDS) -> Driven:
    """OFFERED requests a second (spread over ``clients``, up to STREAMS each at once)."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        subprocess.run(
            [
                *(require("h2load"), "-D", str(seconds), "-c", str(clients), "-m", str(STREAMS)),
                *("--rps", str(int(OFFERED / clients))),
                *("-H", ":authority: api", "--log-file", log.name),
                f"http://{node.outbound}/work/{int(WORK * 1000)}",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        lines = [line.split() for line in log if line.strip()]
    start = min(int(fields[0]) for fields in lines)
    settled = [fields for fields in lines if int(fields[0]) - start >= WARM_UP * 1e6]
    return Driven(
        [int(fields[2]) / 1e6 for fields in settled if fields[1] == "200"],
        [int(fields[2]) / 1e6 for fields in settled if fields[1] == "503"],
        sum(fields[1] == "200" for fields in lines) / seconds,
    )


def no_load_latency(node: NodeProcess) -> float:
    """The median of one request at a time through the node: the upstream's 20 ms and the
    path's own time."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        subprocess.run(
            [
                *(require("h2load"), "-n", "50", "-c", "1", "-m", "1"),
                *("-H", ":authority: api", "--log-file", log.name),
                f"http://{node.outbound}/work/{int(WORK * 1000)}",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return statistics.median(int(line.split()[2]) / 1e6 for line in log if line.strip())


def admin(node: NodeProcess, path: str) -> str:
    return subprocess.run(
        [require("curl"), "-s", "--fail", f"http://{node.admin}{path}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout


def limit_of(node: NodeProcess) -> int:
    found: int = json.loads(admin(node, "/admin/upstreams"))["upstreams"]["api"][
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


def test_vegas_keeps_latency_under_twice_the_no_load_and_sheds_the_rest_fast(
    tmp_path, node_process, upstream
) -> None:
    node = limited_node(tmp_path, node_process, upstream, "vegas")
    no_load = no_load_latency(node)
    driven = drive(node)
    assert driven.served_per_second >= 0.7 * CAPACITY
    assert statistics.median(driven.served) < 2 * no_load, (no_load, driven.served[:20])
    # the rest: fast 503 concurrency-limited, the upstream untouched
    assert len(driven.refused) > len(driven.served)
    assert statistics.median(driven.refused) < WORK / 4
    assert limit_of(node) < 128
    page = admin(node, "/")
    assert re.search(r"<dd class=\"concurrency-limit\">\d+ \(vegas\), \d+ in flight", page)


def test_gradient_keeps_throughput_and_sheds_the_rest_fast(
    tmp_path, node_process, upstream
) -> None:
    """GradientLimit's balance point is its rtt_tolerance (1.5) over the no-load RTT, plus a
    queue of the limit's square root: about twice the no-load latency by design."""
    node = limited_node(tmp_path, node_process, upstream, "gradient")
    no_load = no_load_latency(node)
    driven = drive(node)
    assert driven.served_per_second >= 0.7 * CAPACITY
    assert statistics.median(driven.served) < 3 * no_load
    assert len(driven.refused) > len(driven.served)
    assert statistics.median(driven.refused) < WORK / 4


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
