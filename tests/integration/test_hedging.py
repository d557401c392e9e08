"""Hedged requests against three upstreams in processes of their own, one of which answers
200 ms late: with ``[hedge] delay = "50ms"`` the GETs' tail stays under 120 ms, the slow
endpoint sees its tries cancelled, and POSTs are never hedged."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.upstream_processes import PythonUpstream, hypercorn, scripted

pytestmark = pytest.mark.integration

GETS = 300
POSTS = 60


@pytest.fixture
def upstreams() -> Iterator[list[PythonUpstream]]:
    started = [hypercorn(1_000_000), hypercorn(1_000_000), hypercorn(1_000_000, delay_ms=200)]
    yield started
    for upstream in started:
        upstream.stop()


def durations(node: NodeProcess, requests: int, *, post: Path | None = None) -> list[float]:
    """Seconds each of ``requests`` took through the node (h2load, 4 streams at a time),
    after checking every one was answered 200."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        command = [require("h2load"), "-n", str(requests), "-c", "1", "-m", "4"]
        if post is not None:
            command += ["-d", str(post)]
        command += ["-H", ":authority: api", "--log-file", log.name, f"http://{node.outbound}/x"]
        subprocess.run(command, capture_output=True, timeout=120, check=True)
        lines = [line.split() for line in log if line.strip()]
    assert [fields[1] for fields in lines] == ["200"] * requests
    return sorted(int(fields[2]) / 1e6 for fields in lines)


def p99(seconds: list[float]) -> float:
    return seconds[int(len(seconds) * 0.99) - 1]


def hedges(node: NodeProcess) -> dict[str, int]:
    text = node.admin_page("/metrics")
    found = re.findall(r'meshnode_hedges_total\{outcome="([a-z-]+)",upstream="api"\} (\S+)', text)
    return {outcome: int(float(count)) for outcome, count in found}


def test_a_slow_endpoint_is_hedged_and_its_tries_cancelled_but_posts_never(
    tmp_path, node_process, upstreams
) -> None:
    policy = upstream_toml(
        "api",
        *(upstream.address for upstream in upstreams),
        extra='[balancer]\nstrategy = "round-robin"\n\n[hedge]\ndelay = "50ms"\n',
    )
    node = node_process(write_policies(tmp_path / "p", {"api": policy}))
    slow = upstreams[2]

    gets = durations(node, GETS)
    assert p99(gets) < 0.120, gets[-10:]
    sent = hedges(node)
    assert GETS // 4 <= sent["sent"] <= GETS // 2  # about a third went to the slow endpoint
    assert sent["won"] == sent["sent"]
    counted = slow.counts()
    assert counted.get("GET", 0) == 0  # every try it got lost to a hedge, and was cancelled
    assert counted["cancelled"] == sent["sent"]
    page = node.admin_page("/")
    assert f"after 50 ms; {sent['sent']} sent, {sent['won']} won, 0 held back" in page

    body = tmp_path / "body"
    body.write_bytes(b"x" * 100)
    posts = durations(node, POSTS, post=body)
    assert posts[-1] >= 0.200  # the slow endpoint's POSTs waited for it: not hedged
    assert hedges(node)["sent"] == sent["sent"]
    assert slow.counts()["POST"] == POSTS // 3


def test_an_answer_that_crosses_the_cancel_of_a_lost_try_is_ignored(tmp_path, node_process) -> None:
    """The slow endpoint answers each try only after the node cancelled it, as an answer
    already on the wire would arrive: the node ignores those frames (RFC 9113 5.1), neither
    resetting the stream again nor counting the upstream as a peer that breaks rules."""
    crossing, fast = scripted("answer-after-reset", 1), hypercorn(1_000_000)
    try:
        policy = upstream_toml(
            "api",
            crossing.address,
            fast.address,
            extra='[balancer]\nstrategy = "round-robin"\n\n[hedge]\ndelay = "20ms"\n',
        )
        node = node_process(write_policies(tmp_path / "p", {"api": policy}))
        durations(node, 40)
        answered_late = crossing.counts()["answered-after-reset"]
        assert answered_late >= 15  # about every other request went there first
        assert hedges(node)["won"] == answered_late
        metrics = node.admin_page("/metrics")
        assert 'kind="stream-error"' not in metrics
        assert "stream-error" not in "".join(node.log)
    finally:
        crossing.stop()
        fast.stop()
