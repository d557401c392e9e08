"""Deadlines end to end, against upstreams in processes of their own: a retry that cannot
finish in time is not made, and a gRPC upstream is told the time actually left."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.grpc_server import grpc_server, unary
from tests.support.upstream_processes import PythonUpstream, hypercorn

pytestmark = pytest.mark.integration

RETRY_ON_503 = """
[timeout]
request = "500ms"
[retry]
retry_on = ["503"]
initial_delay = "10ms"
jitter = 0.0
"""


@pytest.fixture
def service() -> Iterator[PythonUpstream]:
    started = hypercorn(100_000)
    yield started
    started.stop()


def test_a_slow_503_is_answered_now_rather_than_retried_into_a_504(
    tmp_path, node_process, service
) -> None:
    policies = {"api": upstream_toml("api", service.address, extra=RETRY_ON_503)}
    node: NodeProcess = node_process(write_policies(tmp_path / "p", policies))
    result = subprocess.run(
        [
            *(require("curl"), "-s", "-o", "/dev/null", "--http2-prior-knowledge", "-D", "-"),
            *("-H", "host: api", "-w", "%{time_total}", f"http://{node.outbound}/status/503/300"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = result.stdout.splitlines()  # the head, a blank line, then the time taken
    assert lines[0].startswith("HTTP/2 503"), result.stdout
    assert "x-meshnode-retry-skipped: deadline" in lines
    assert 0.3 <= float(lines[-1]) < 0.45  # its answer at ~300 ms, not a 504 at 500 ms
    assert service.counts().get("GET", 0) == 0  # /status is not counted; one try was made


class DeadlineRecorder:
    def __init__(self) -> None:
        self.remaining: list[float | None] = []

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.remaining.append(context.time_remaining())
        return request


@pytest.fixture
def grpc_service() -> Iterator[tuple[str, DeadlineRecorder]]:
    recorder = DeadlineRecorder()
    with grpc_server("test.Echo", {"Echo": unary(recorder.echo)}, workers=2) as address:
        yield address, recorder


def test_a_grpc_upstream_sees_at_most_the_time_left(tmp_path, node_process, grpc_service) -> None:
    address, recorder = grpc_service
    policy = upstream_toml("echo", address, extra='[timeout]\nrequest = "2s"\n')
    node: NodeProcess = node_process(write_policies(tmp_path / "p", {"echo": policy}))
    with grpc.insecure_channel(
        node.outbound, options=[("grpc.default_authority", "echo")]
    ) as channel:
        call = channel.unary_unary("/test.Echo/Echo")
        assert call(b"x", timeout=30) == b"x"  # the caller allows 30 s; the node's policy 2 s
        assert call(b"y", timeout=1) == b"y"  # the caller's own, tighter, is kept
    first, second = recorder.remaining
    assert first is not None and 1.0 < first <= 2.0
    assert second is not None and second <= 1.05  # grpcio rounds the 1 s it sends up a little
