"""Distributed tracing end to end: meshnode processes, a Hypercorn service and a gRPC
server of their own, curl and grpcio as callers, and a real OTLP/HTTP receiver that
decodes what the nodes export (tests/support/otlp_receiver.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
from trio_websocket import WebSocketRequest

from meshnode import certs
from meshnode.client import open_mesh_client
from meshnode.policy import Address
from tests.conftest import NodeProcess, free_port, require, upstream_toml, write_policies
from tests.integration.test_websocket import EchoServer, chat, exchange, websocket_upstream
from tests.support.grpc_server import grpc_server, unary
from tests.support.mtls import inbound_section, mesh_upstream, node_toml
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.trace_picture import svg
from tests.support.upstream_processes import PythonUpstream, hypercorn

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])\Z")


def tracing_section(endpoint: str, ratio: float = 1.0, **keys: object) -> str:
    lines = [f'endpoint = "{endpoint}"', f"sample_ratio = {ratio}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n[tracing]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    started = OTLPReceiver()
    yield started
    started.close()


@pytest.fixture
def service() -> Iterator[PythonUpstream]:
    """Hypercorn, not recycling its connections within a test: how a recycled connection
    costs no request is tests/integration/test_upstream_lifecycle.py's matter."""
    started = hypercorn(100_000)
    yield started
    started.stop()


def node_with(tmp_path: Path, node_process, service: str, tracing: str, extra: str = ""):
    directory = write_policies(tmp_path / "p", {"api": upstream_toml("api", service, extra=extra)})
    with (directory / "node.toml").open("a") as node_toml_file:
        node_toml_file.write(tracing)
    node: NodeProcess = node_process(directory)
    return node


def get(node: NodeProcess, path: str, *headers: str, authority: str = "api") -> tuple[int, str]:
    args = [require("curl"), "-s", "--http2-prior-knowledge", "-H", f"host: {authority}"]
    for header in headers:
        args += ["-H", header]
    args += ["-w", "\n%{http_code}", f"http://{node.outbound}{path}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def seen_by_service(node: NodeProcess, *headers: str) -> dict[str, str]:
    status, body = get(node, "/headers", *headers)
    assert status == 200, body
    fields: dict[str, str] = json.loads(body)
    return fields


def of_trace(trace_id: str, count: int):
    return lambda spans: len([s for s in spans if s.trace_id == trace_id]) >= count


def one(spans: list[ReceivedSpan], **wanted: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in wanted.items())]
    assert len(found) == 1, (wanted, spans)
    return found[0]


def test_a_sampled_request_gets_a_server_span_and_a_span_per_try(
    tmp_path, node_process, receiver, service
) -> None:
    node = node_with(tmp_path, node_process, service.address, tracing_section(receiver.endpoint))
    fields = seen_by_service(node, "x-request-id: trace-me")
    trace_id, parent, flags = TRACEPARENT.match(fields["traceparent"]).groups()  # type: ignore[union-attr]
    assert flags == "01"
    spans = receiver.wait_for(of_trace(trace_id, 2))
    server = one(spans, trace_id=trace_id, kind="server")
    client = one(spans, trace_id=trace_id, kind="client")
    assert server.parent_span_id == ""  # the node started the trace
    assert client.parent_span_id == server.span_id
    assert parent == client.span_id  # the service's parent is the try that reached it
    assert server.service == "test-node"  # [node] name, service_name unset
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["url.path"] == "/headers"
    assert server.attributes["meshnode.upstream"] == "api"
    assert server.attributes["meshnode.request_id"] == "trace-me"
    assert server.attributes["http.response.status_code"] == 200
    host, port = service.address.rsplit(":", 1)
    assert (client.attributes["server.address"], client.attributes["server.port"]) == (
        host,
        int(port),
    )
    assert server.status == client.status == "unset"


def test_an_incoming_traceparent_is_continued_with_its_tracestate(
    tmp_path, node_process, receiver, service
) -> None:
    node = node_with(tmp_path, node_process, service.address, tracing_section(receiver.endpoint))
    fields = seen_by_service(
        node, f"traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate: vendor=abc"
    )
    trace_id, parent, flags = TRACEPARENT.match(fields["traceparent"]).groups()  # type: ignore[union-attr]
    assert (trace_id, flags) == (CALLER_TRACE, "01")
    assert fields["tracestate"] == "vendor=abc"
    spans = receiver.wait_for(of_trace(CALLER_TRACE, 2))
    server = one(spans, trace_id=CALLER_TRACE, kind="server")
    assert server.parent_span_id == CALLER_SPAN
    assert parent == one(spans, trace_id=CALLER_TRACE, kind="client").span_id


def test_unsampled_requests_export_nothing(tmp_path, node_process, receiver, service) -> None:
    node = node_with(
        tmp_path, node_process, service.address, tracing_section(receiver.endpoint, ratio=0.0)
    )
    unsampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    assert seen_by_service(node, f"traceparent: {unsampled}")["traceparent"] == unsampled
    assert "traceparent" not in seen_by_service(node)  # no context, not sampled: as it came
    replaced = seen_by_service(node, "traceparent: 00-garbage-00")["traceparent"]
    assert TRACEPARENT.match(replaced).group(3) == "00"  # type: ignore[union-attr]
    sampled = "5" * 32
    seen_by_service(node, f"traceparent: 00-{sampled}-{CALLER_SPAN}-01")  # the caller's say
    spans = receiver.wait_for(of_trace(sampled, 2))
    assert {span.trace_id for span in spans} == {sampled}


@pytest.mark.parametrize(
    "malformed",
    [
        f"00-{'0' * 32}-{CALLER_SPAN}-01",  # an all-zero trace id
        f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",  # upper-case hex
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",  # the forbidden version
        "00-not-a-trace-01",
    ],
)
def test_a_malformed_traceparent_is_replaced_by_a_fresh_trace(
    tmp_path, node_process, receiver, service, malformed
) -> None:
    node = node_with(tmp_path, node_process, service.address, tracing_section(receiver.endpoint))
    fields = seen_by_service(node, f"traceparent: {malformed}")
    found = TRACEPARENT.match(fields["traceparent"])
    assert found is not None and fields["traceparent"] != malformed
    spans = receiver.wait_for(of_trace(found.group(1), 2))
    assert one(spans, trace_id=found.group(1), kind="server").parent_span_id == ""


def test_b3_headers_are_read_and_written_when_asked_for(
    tmp_path, node_process, receiver, service
) -> None:
    tracing = tracing_section(receiver.endpoint, propagation=["b3multi", "tracecontext"])
    node = node_with(tmp_path, node_process, service.address, tracing)
    fields = seen_by_service(
        node, f"x-b3-traceid: {CALLER_TRACE}", f"x-b3-spanid: {CALLER_SPAN}", "x-b3-sampled: 1"
    )
    assert fields["x-b3-traceid"] == CALLER_TRACE and fields["x-b3-sampled"] == "1"
    assert fields["traceparent"].startswith(f"00-{CALLER_TRACE}-{fields['x-b3-spanid']}-01")
    spans = receiver.wait_for(of_trace(CALLER_TRACE, 2))
    assert one(spans, kind="server").parent_span_id == CALLER_SPAN


def test_retry_and_fallback_events_are_on_the_request_span(
    tmp_path, node_process, receiver, service
) -> None:
    extra = """
        [retry]
        retry_on = ["503"]
        max_retries = 1
        initial_delay = "10ms"
        jitter = 0.0
        [fallback]
        kind = "static"
        on = ["retries-exhausted"]
        status = 200
        body = "from the fallback"
    """
    node = node_with(
        tmp_path, node_process, service.address, tracing_section(receiver.endpoint), extra
    )
    assert get(node, "/flaky/one", f"traceparent: 00-{'1' * 32}-{CALLER_SPAN}-01")[0] == 200
    assert get(node, "/status/503", f"traceparent: 00-{'2' * 32}-{CALLER_SPAN}-01") == (
        200,
        "from the fallback",
    )
    spans = receiver.wait_for(
        lambda spans: of_trace("1" * 32, 3)(spans) and of_trace("2" * 32, 3)(spans)
    )
    retried = one(spans, trace_id="1" * 32, kind="server")
    [(name, attributes)] = retried.events
    assert name == "retry" and attributes["meshnode.retry.reason"] == "503"
    assert attributes["meshnode.retry.delay_ms"] == 10
    tries = sorted(
        (s for s in spans if s.trace_id == "1" * 32 and s.kind == "client"),
        key=lambda s: s.start_ns,
    )
    assert [t.attributes["http.response.status_code"] for t in tries] == [503, 200]
    assert [t.status for t in tries] == ["error", "unset"]
    assert tries[1].attributes["http.request.resend_count"] == 1
    picture = svg([s for s in spans if s.trace_id == "1" * 32])  # as docs/tracing.md draws it
    assert picture.count("<rect x=") == 3 and "event: retry 503 after 10 ms" in picture
    fell_back = one(spans, trace_id="2" * 32, kind="server")
    assert [name for name, _ in fell_back.events] == ["retry", "fallback"]
    assert fell_back.events[1][1]["meshnode.fallback.kind"] == "static"
    assert fell_back.status == "unset"  # the fallback answered the caller


def test_a_hedged_request_has_a_hedge_event_and_its_losing_try_is_not_an_error(
    tmp_path, node_process, receiver, service
) -> None:
    slow = hypercorn(100_000, delay_ms=300)
    try:
        directory = write_policies(
            tmp_path / "p",
            {
                "api": upstream_toml(
                    "api",
                    slow.address,
                    service.address,
                    extra='[balancer]\nstrategy = "round-robin"\n[hedge]\ndelay = "20ms"\n',
                )
            },
        )
        with (directory / "node.toml").open("a") as node_toml_file:
            node_toml_file.write(tracing_section(receiver.endpoint))
        node = node_process(directory)
        for n in "12":  # round robin: one of the two goes to the slow endpoint first
            assert get(node, "/x", f"traceparent: 00-{n * 32}-{CALLER_SPAN}-01")[0] == 200
        spans = receiver.wait_for(lambda spans: len(spans) >= 5)
    finally:
        slow.stop()
    [hedged] = [s for s in spans if s.kind == "server" and s.events]
    assert [name for name, _ in hedged.events] == ["hedge"]
    assert hedged.events[0][1]["meshnode.hedge.endpoint"] == service.address
    tries = [s for s in spans if s.trace_id == hedged.trace_id and s.kind == "client"]
    lost = [t for t in tries if t.attributes.get("meshnode.hedge.lost")]
    assert len(tries) == 2 and len(lost) == 1
    assert [t.status for t in tries] == ["unset", "unset"]
    assert lost[0].attributes["server.port"] == int(slow.address.rsplit(":", 1)[1])


def test_a_collector_that_is_down_costs_requests_nothing_and_its_drops_are_counted(
    tmp_path, node_process, service
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    tracing = tracing_section(down, max_queued_spans=16, export_timeout="1s")
    node = node_with(tmp_path, node_process, service.address, tracing)
    result = subprocess.run(
        [
            *(require("h2load"), "-n", "2000", "-c", "4", "-m", "4"),
            *("-H", ":authority: api", f"http://{node.outbound}/"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in result.stdout, result.stdout
    exposition = subprocess.run(
        [require("curl"), "-s", f"http://{node.admin}/metrics"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    dropped = float(re.search(r"^meshnode_spans_dropped_total (\S+)$", exposition, re.M).group(1))  # type: ignore[union-attr]
    assert dropped >= 4000 - 16 - 512  # two spans a request; at most a queue and a batch held


# -- two nodes: caller -> A -> mTLS -> B -> service -----------------------------------


def two_nodes(tmp_path: Path, node_process, service: str, endpoint: str) -> NodeProcess:
    pki = tmp_path / "pki"
    certs.init_ca(pki, "mesh.local")
    for name in ("node-a", "node-b"):
        certs.issue(pki, name)
    inbound = inbound_section(service, "node-a")
    node_toml(tmp_path / "b", "node-b", pki, inbound=inbound + tracing_section(endpoint))
    b = node_process(tmp_path / "b")
    b_inbound = re.search(r"inbound=(\S+)", b.ready_line).group(1)  # type: ignore[union-attr]
    node_toml(tmp_path / "a", "node-a", pki, inbound=tracing_section(endpoint))
    mesh_upstream(tmp_path / "a", "node-b", Address.parse(b_inbound))
    a: NodeProcess = node_process(tmp_path / "a")
    return a


def check_the_chain(spans: list[ReceivedSpan], trace_id: str, service_parent: str) -> None:
    """caller -> A server -> A try -> B server -> B try -> the service, one trace."""
    a_server = one(spans, trace_id=trace_id, service="node-a", kind="server")
    a_try = one(spans, trace_id=trace_id, service="node-a", kind="client")
    b_server = one(spans, trace_id=trace_id, service="node-b", kind="server")
    b_try = one(spans, trace_id=trace_id, service="node-b", kind="client")
    assert a_server.parent_span_id == CALLER_SPAN
    assert a_try.parent_span_id == a_server.span_id
    assert b_server.parent_span_id == a_try.span_id
    assert b_try.parent_span_id == b_server.span_id
    assert service_parent == b_try.span_id
    assert b_server.attributes["meshnode.peer.identity"] == "spiffe://mesh.local/service/node-a"


def test_one_trace_runs_through_two_nodes_to_the_service(
    tmp_path, node_process, receiver, service
) -> None:
    a = two_nodes(tmp_path, node_process, service.address, receiver.endpoint)
    status, body = get(
        a, "/headers", f"traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01", authority="node-b"
    )
    assert status == 200, body
    trace_id, parent, _ = TRACEPARENT.match(json.loads(body)["traceparent"]).groups()  # type: ignore[union-attr]
    assert trace_id == CALLER_TRACE
    check_the_chain(receiver.wait_for(of_trace(CALLER_TRACE, 4)), CALLER_TRACE, parent)


class RecordingGreeter:
    """A gRPC service (grpcio's own server) that remembers the traceparent each call had."""

    def __init__(self) -> None:
        self.traceparents: list[str] = []

    def reverse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        self.traceparents.append(str(metadata.get("traceparent", "")))
        return request[::-1]


@pytest.fixture
def grpc_service() -> Iterator[tuple[str, RecordingGreeter]]:
    greeter = RecordingGreeter()
    with grpc_server("test.Greeter", {"Reverse": unary(greeter.reverse)}) as address:
        yield address, greeter


def test_a_grpc_call_is_traced_through_two_nodes(
    tmp_path, node_process, receiver, grpc_service
) -> None:
    address, greeter = grpc_service
    a = two_nodes(tmp_path, node_process, address, receiver.endpoint)
    options = [("grpc.default_authority", "node-b")]
    with grpc.insecure_channel(a.outbound, options=options) as channel:
        call = channel.unary_unary("/test.Greeter/Reverse")
        metadata = [("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")]
        assert call(b"abc", metadata=metadata, timeout=10) == b"cba"
    [seen] = greeter.traceparents
    trace_id, parent, _ = TRACEPARENT.match(seen).groups()  # type: ignore[union-attr]
    assert trace_id == CALLER_TRACE
    spans = receiver.wait_for(of_trace(CALLER_TRACE, 4))
    check_the_chain(spans, CALLER_TRACE, parent)
    assert one(spans, service="node-a", kind="server").attributes["url.path"] == (
        "/test.Greeter/Reverse"
    )


def test_tracing_is_reloaded_and_off_when_the_section_goes(
    tmp_path, node_process, receiver, service
) -> None:
    node = node_with(
        tmp_path, node_process, service.address, tracing_section(receiver.endpoint, ratio=0.0)
    )
    assert "traceparent" not in seen_by_service(node)  # sampled out
    node_toml_path = tmp_path / "p" / "node.toml"
    text = node_toml_path.read_text()
    node_toml_path.write_text(text.replace("sample_ratio = 0.0", "sample_ratio = 1.0"))
    node.wait_for_log("policies reloaded")
    fields = seen_by_service(node)
    trace_id = TRACEPARENT.match(fields["traceparent"]).group(1)  # type: ignore[union-attr]
    receiver.wait_for(of_trace(trace_id, 2))
    node_toml_path.write_text(text[: text.index("\n[tracing]")] + "\n")
    node.wait_for_log("policies reloaded", count=2)
    malformed = "traceparent: 00-garbage-01"
    assert seen_by_service(node, malformed)["traceparent"] == "00-garbage-01"  # off: untouched


async def test_the_embedded_mesh_client_takes_the_same_section(tmp_path, receiver, service) -> None:
    directory = write_policies(tmp_path / "p", {"api": upstream_toml("api", service.address)})
    with (directory / "node.toml").open("a") as node_toml_file:
        node_toml_file.write(tracing_section(receiver.endpoint))
    async with open_mesh_client("caller", policies=directory, watch=False) as mesh:
        response = await mesh.get("api", "/headers")
    trace_id, parent, _ = TRACEPARENT.match(json.loads(response.text)["traceparent"]).groups()  # type: ignore[union-attr]
    spans = await trio.to_thread.run_sync(receiver.wait_for, of_trace(trace_id, 2))
    assert parent == one(spans, trace_id=trace_id, kind="client").span_id
    assert one(spans, trace_id=trace_id, kind="server").service == "test-node"


def test_an_http1_request_is_traced_and_a_mesh_error_sets_the_status(
    tmp_path, node_process, receiver, service
) -> None:
    directory = write_policies(
        tmp_path / "p",
        {
            "api": upstream_toml("api", service.address),
            "gone": upstream_toml("gone", f"127.0.0.1:{free_port()}"),
        },
    )
    with (directory / "node.toml").open("a") as node_toml_file:
        node_toml_file.write(tracing_section(receiver.endpoint))
    node: NodeProcess = node_process(directory)
    http1 = [require("curl"), "-s", "--http1.1", "-H", "host: api", "-H", "x-request-id: h1"]
    body = subprocess.run(
        [*http1, f"http://{node.outbound}/headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    trace_id = TRACEPARENT.match(json.loads(body)["traceparent"]).group(1)  # type: ignore[union-attr]
    assert get(node, "/", authority="gone")[0] == 503  # connect-failure
    spans = receiver.wait_for(
        lambda spans: (
            of_trace(trace_id, 2)(spans)
            and any(
                s.attributes.get("meshnode.upstream") == "gone" and s.kind == "server"
                for s in spans
            )
        )
    )
    assert one(spans, trace_id=trace_id, kind="server").attributes["meshnode.request_id"] == "h1"
    failed = [s for s in spans if s.attributes.get("meshnode.upstream") == "gone"]
    server = one(failed, kind="server")
    assert (server.status, server.attributes["error.type"]) == ("error", "upstream-connect-failure")
    assert server.attributes["http.response.status_code"] == 503


class HeaderKeepingEcho(EchoServer):
    """The echo server, remembering each handshake's trace header."""

    def __init__(self) -> None:
        super().__init__()
        self.traceparents: list[str] = []

    async def _echo(self, request: WebSocketRequest) -> None:
        fields = {bytes(name).lower(): bytes(value) for name, value in request.headers}
        self.traceparents.append(fields.get(b"traceparent", b"").decode())
        await super()._echo(request)


async def test_a_websocket_upgrade_is_traced(tmp_path, nursery, running, receiver) -> None:
    echo = HeaderKeepingEcho()
    address = await echo.start(nursery)
    directory = write_policies(tmp_path / "p", {"echo": websocket_upstream("echo", address)})
    with (directory / "node.toml").open("a") as node_toml_file:
        node_toml_file.write(tracing_section(receiver.endpoint))
    _, addresses = await running(directory)
    caller = (b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode())
    async with chat(addresses.outbound[0], extra_headers=[caller]) as ws:
        await exchange(ws)
    [seen] = echo.traceparents
    trace_id, parent, _ = TRACEPARENT.match(seen).groups()  # type: ignore[union-attr]
    assert trace_id == CALLER_TRACE
    spans = await trio.to_thread.run_sync(receiver.wait_for, of_trace(CALLER_TRACE, 2))
    assert parent == one(spans, kind="client").span_id
    assert one(spans, kind="server").parent_span_id == CALLER_SPAN


def test_fault_injection_rate_limiting_and_an_open_breaker_are_events_on_the_span(
    tmp_path, node_process, receiver, service
) -> None:
    limited_api = (
        "[chaos]\nheader_faults = true\n[rate_limit]\nrequests_per_second = 0.001\nburst = 1\n"
    )
    guarded = "[circuit_breaker]\nfailure_threshold = 5\n"
    directory = write_policies(
        tmp_path / "p",
        {
            "api": upstream_toml("api", service.address, extra=limited_api),
            "guarded": upstream_toml("guarded", service.address, extra=guarded),
        },
    )
    with (directory / "node.toml").open("a") as node_toml_file:
        node_toml_file.write(tracing_section(receiver.endpoint))
    node: NodeProcess = node_process(directory)
    faulted, limited, refused = ("3" * 32, "4" * 32, "5" * 32)
    caller = f"-{CALLER_SPAN}-01"
    abort = "x-meshnode-fault-abort: 418"
    assert get(node, "/", f"traceparent: 00-{faulted}{caller}", abort)[0] == 418
    assert get(node, "/", f"traceparent: 00-{limited}{caller}")[0] == 429  # the burst is spent
    force = [sys.executable, "-m", "meshnode", "breakers", "force", "guarded", "open"]
    subprocess.run([*force, "--admin", f"http://{node.admin}"], check=True, timeout=30)
    opened = get(node, "/", f"traceparent: 00-{refused}{caller}", authority="guarded")
    assert opened[0] == 503
    spans = receiver.wait_for(
        lambda spans: all(of_trace(trace, 1)(spans) for trace in (faulted, limited, refused))
    )
    fault = one(spans, trace_id=faulted, kind="server")
    assert [name for name, _ in fault.events] == ["fault-injected"]
    assert fault.events[0][1]["meshnode.fault.abort_status"] == 418
    rate = one(spans, trace_id=limited, kind="server")
    assert [name for name, _ in rate.events] == ["rate-limited"]
    assert (rate.status, rate.attributes["error.type"]) == ("error", "rate-limited")
    breaker = one(spans, trace_id=refused, kind="server")
    assert [name for name, _ in breaker.events] == ["circuit-open"]
    assert (breaker.status, breaker.attributes["error.type"]) == ("error", "circuit-open")
