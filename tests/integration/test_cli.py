"""meshnode as a user runs it: the command line, signals, and load from real clients."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.client import sample
from tests.support.commands import meshnode

EXAMPLES = Path(__file__).parents[2] / "policies"


def test_validate_accepts_the_examples() -> None:
    result = meshnode("policy", "validate", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLES}: valid (version ")


def test_validate_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    write_policies(tmp_path, {"a": "[upstream]\nname = 1\n", "b": "[upstream\n"})
    result = meshnode("policy", "validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{tmp_path}/a.toml: upstream.name: expected a string, got 1",
        f"{tmp_path}/a.toml: discovery: required key is missing",
        f"{tmp_path}/b.toml: TOML syntax: Expected ']' at the end of a table declaration "
        "(at line 1, column 10)",
        f"3 error(s) in {tmp_path}",
    ]


def test_validate_warns_of_the_seeds_anti_patterns_and_strict_fails(tmp_path: Path) -> None:
    risky = upstream_toml(
        "risky",
        "127.0.0.1:1",
        extra=(
            '[retry]\nmax_retries = 12\nbackoff = "constant"\njitter = 0\n'
            'retry_non_idempotent = true\n[timeout]\nrequest = "0s"\n'
        ),
    )
    slow = upstream_toml("slow", "127.0.0.1:1", extra='[timeout]\nrequest = "2m"\n')
    write_policies(
        tmp_path, {"risky": risky, "slow": slow, "fine": upstream_toml("fine", "127.0.0.1:1")}
    )
    result = meshnode("policy", "validate", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "retry.jitter",
        "retry.max_retries",
        "retry.retry_non_idempotent",
        "timeout.request",
        "timeout.request",
    ]
    assert lines[0].startswith(f"{tmp_path}/risky.toml: retry.jitter: constant backoff")
    assert lines[4] == (
        f"{tmp_path}/slow.toml: timeout.request: 2m is longer than callers wait; keep it to "
        "60s or less, and fail fast"
    )
    assert "; 5 warning(s))" in result.stdout
    strict = meshnode("policy", "validate", "--strict", str(tmp_path))
    assert strict.returncode == 1
    assert strict.stderr.splitlines()[-1] == f"5 error(s) in {tmp_path} (--strict)"
    assert meshnode("policy", "validate", "--strict", str(EXAMPLES)).returncode == 0


def test_serve_refuses_bad_policies(tmp_path: Path) -> None:
    write_policies(tmp_path, {"a": "[upstream]\nname = 1\n"})
    result = meshnode("serve", "--policies", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/a.toml: upstream.name: expected a string, got 1" in result.stderr


@pytest.fixture
def nghttpd(start_nghttpd) -> str:
    return start_nghttpd()


def test_h2load_thousands_of_requests_none_failed(tmp_path: Path, node_process, nghttpd) -> None:
    node: NodeProcess = node_process(
        write_policies(tmp_path / "p", {"web": upstream_toml("web", nghttpd)})
    )
    result = subprocess.run(
        [
            require("h2load"),
            "-n",
            "5000",
            "-c",
            "10",
            "-m",
            "10",
            "-H",
            ":authority: web",
            f"http://{node.outbound}/index.html",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "5000 succeeded, 0 failed, 0 errored, 0 timeout" in result.stdout, result.stdout
    assert "status codes: 5000 2xx" in result.stdout


def _young_collections(admin: str) -> float:
    exposition = urllib.request.urlopen(f"http://{admin}/metrics", timeout=10).read().decode()
    return sample(exposition, 'python_gc_collections_total{generation="0"}')


def test_serving_requests_seldom_runs_the_cyclic_collector(
    tmp_path: Path, node_process, nghttpd
) -> None:
    """At CPython's default threshold, 2,000 requests ten streams at a time cost some eighty
    young-generation collections; at meshnode's, none or one."""
    node: NodeProcess = node_process(
        write_policies(tmp_path / "p", {"web": upstream_toml("web", nghttpd)})
    )
    before = _young_collections(node.admin)
    load = [require("h2load"), "-n", "2000", "-c", "10", "-m", "10", "-H", ":authority: web"]
    subprocess.run([*load, f"http://{node.outbound}/index.html"], check=True, timeout=120)
    assert _young_collections(node.admin) - before <= 3


def test_health_endpoints(tmp_path: Path, node_process, nghttpd) -> None:
    node: NodeProcess = node_process(
        write_policies(tmp_path / "p", {"web": upstream_toml("web", nghttpd)})
    )
    for path in ("/health/live", "/health/ready", "/health"):
        result = subprocess.run(
            [
                require("curl"),
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{node.admin}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == "200", path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_requests_then_exits_0(
    tmp_path: Path, node_process, signum
) -> None:
    """A request in flight when the signal arrives still completes; then the node exits 0."""
    slow = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slow_upstream"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert slow.stdout is not None
        upstream = slow.stdout.readline().strip()
        node: NodeProcess = node_process(
            write_policies(tmp_path / "p", {"api": upstream_toml("api", upstream)})
        )
        client = subprocess.Popen(
            [
                require("curl"),
                "-s",
                "--http2-prior-knowledge",
                "-H",
                "host: api",
                f"http://{node.outbound}/slow/1",
            ],
            stdout=subprocess.PIPE,
        )
        assert slow.stdout.readline() == "request /slow/1\n"  # in flight: answered after 1 s
        node.process.send_signal(signum)
        host, port = node.outbound.rsplit(":", 1)
        deadline = time.monotonic() + 10
        refused = False
        while not refused and time.monotonic() < deadline:  # the listener closes at once
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                time.sleep(0.02)
            except (ConnectionRefusedError, ConnectionResetError):
                # Refused once the listener is closed; reset when it closed while this
                # connection waited in its backlog.
                refused = True
        assert refused, "new connections were still accepted while draining"
        assert client.poll() is None  # ...while the request in flight carries on
        out, _ = client.communicate(timeout=30)
        assert out == b"slow answer"
        assert node.process.wait(timeout=30) == 0
        log = node.rest_of_log()
        assert "draining" in log
        assert "drained cleanly" in log
    finally:
        slow.kill()
        slow.wait()


def test_the_readmes_first_policy_is_valid(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    for block in re.findall(r"```toml\n(.*?)```", readme, re.S):
        name = re.match(r"# policies/(\S+)", block)
        assert name is not None, block
        (tmp_path / name.group(1)).write_text(block)
    result = meshnode("policy", "validate", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "upstreams: payments)" in result.stdout
