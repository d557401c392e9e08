"""The benchmark suite's own pieces that need no load generator: they must keep working
as h2 moves on (a bench that breaks is found by whoever runs it next, too late)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port, require

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

from common import write_report
from h2_floor import floor_us
from instructions_bench import bytecodes, requests
from proxy_bench import h2_layer_us


def test_the_h2_floor_is_measured() -> None:
    assert 0 < floor_us(requests=500) < 100_000


def test_meshnode_s_codec_is_measured_on_the_same_steps() -> None:
    """In its own process, as the bench runs it."""
    assert 0 < h2_layer_us(requests=500) < 100_000


def test_the_bytecodes_of_a_request_are_counted_by_function() -> None:
    """The request path's functions are counted, and two counts of the same requests agree
    (a count, not a sample; a memo filled in one run and not the other, and trio's
    scheduling, which batches differently, move it a little)."""
    first, second = bytecodes(4), bytecodes(4)

    def request_path(counts: Counter[str]) -> float:
        return sum(n for name, n in counts.items() if name.startswith("meshnode.proxy."))

    assert first["meshnode.proxy.forward:Proxy._serve"] > 0
    assert first["meshnode.proxy.tries:Tries.run"] > 0
    assert request_path(second) == pytest.approx(request_path(first), rel=0.1)
    assert sum(first.values()) > request_path(first) > 100


def test_a_report_says_which_machine_it_ran_on(tmp_path: Path) -> None:
    target = write_report(tmp_path, "proxy", {"args": {"out": tmp_path}, "scenarios": {}})
    report = json.loads(target.read_text())
    assert target.name.startswith("proxy-") and target.suffix == ".json"
    assert set(report["machine"]) == {"platform", "python", "python_executable", "cpus"}
    assert Path(report["machine"]["python_executable"]).is_file()  # which build ran it
    assert report["args"] == {"out": str(tmp_path)}


@pytest.mark.parametrize("h2_inbound", [False, True])
def test_the_counted_request_path_runs(h2_inbound: bool) -> None:
    requests(20, h2_inbound=h2_inbound)  # what callgrind counts, without callgrind: it must not rot


def test_the_limit_bench_reads_the_tests_load_helpers() -> None:
    import limit_bench  # noqa: PLC0415  (bench/ is on the path only from here on)

    assert limit_bench.CAPACITY == 400


def test_the_busy_poll_bench_paces_what_it_measures() -> None:
    import busy_poll_bench  # noqa: PLC0415

    assert busy_poll_bench.PACED / busy_poll_bench.RATE == 10  # seconds of paced requests


def test_the_bare_relay_relays_what_the_upstream_answers(
    start_nghttpd: Callable[[], str],
) -> None:
    """bench/bare_relay.py, the reference the proxy bench measures the node against, in
    its own process between curl and nghttpd."""
    from common import start_bare_relay  # noqa: PLC0415

    upstream_port = int(start_nghttpd().rsplit(":", 1)[1])
    port = free_port()
    relay = start_bare_relay(port, upstream_port)
    try:
        for _ in range(3):  # callers one after another, each on its own connection
            answer = subprocess.run(
                [require("curl"), "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            assert answer.stdout == b"k" * 1024
    finally:
        relay.kill()
        relay.wait()
