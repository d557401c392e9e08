"""Upstreams that recycle their connections cost callers nothing.

Every upstream here runs in a process of its own (Debian's nginx, Hypercorn, a scripted
h2 or HTTP/1.1 server), with its own unpatched protocol library and its default
connection lifecycle but for the request limit, and meshnode runs as ``meshnode
serve``. No upstream has a ``[retry]`` section unless the test says why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.events
import hpack
import pytest
import trio

from meshnode.policy.units import Address
from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.attacker import attack, request_frame
from tests.support.client import sample
from tests.support.rawclient import RawH2Client
from tests.support.upstream_processes import (
    Load,
    Nginx,
    PythonUpstream,
    h2load,
    hypercorn,
    scripted,
)

pytestmark = pytest.mark.integration

GETS, POSTS = 5000, 2000
HTTP1 = 'protocol = "http1"\n'


@pytest.fixture
def upstreams() -> Iterator[list[PythonUpstream | Nginx]]:
    """Every upstream a test starts, stopped at its end."""
    started: list[PythonUpstream | Nginx] = []
    yield started
    for upstream in started:
        upstream.stop()


@pytest.fixture
def post_body(tmp_path: Path) -> Path:
    body = tmp_path / "body"
    body.write_bytes(bytes(range(256)) * 4)
    return body


def node_for(
    node_process: Callable[..., NodeProcess],
    directory: Path,
    endpoints: list[str],
    *,
    upstream_keys: str = "",
    extra: str = "",
) -> NodeProcess:
    policy = upstream_toml("web", *endpoints, extra=extra, upstream_keys=upstream_keys)
    node: NodeProcess = node_process(write_policies(directory, {"web": policy}))
    return node


def exposed(node: NodeProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://{node.admin}/metrics", timeout=10) as answer:
        return sample(answer.read().decode(), name)


def resent(node: NodeProcess, reason: str) -> float:
    return exposed(node, f'meshnode_requests_resent_total{{reason="{reason}",upstream="web"}}')


def goaways(node: NodeProcess) -> float:
    return exposed(node, 'meshnode_upstream_goaways_total{upstream="web"}')


def none_failed(load: Load, requests: int, node: NodeProcess) -> None:
    """Every request answered 2xx; else what h2load and the node's log said."""
    if (load.succeeded, load.failed, load.errored, load.statuses["2xx"]) != (
        requests,
        0,
        0,
        requests,
    ):
        said = [line for line in node.log if "meshnode.proxy" in line or "pool" in line]
        pytest.fail(f"{load.output}\n{''.join(said[-30:])}")


def curl(node: NodeProcess, path: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    """One request through the node, as curl sends it; the body, then the status."""
    return subprocess.run(
        [
            require("curl"),
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "host: web",
            "-w",
            "\n%{http_code}",
            *options,
            f"http://{node.outbound}{path}",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )


@pytest.mark.parametrize("protocol", ["h2c", "http1"])
def test_nginx_recycling_every_50_requests_loses_nothing(
    tmp_path: Path, node_process, upstreams, post_body: Path, protocol: str
) -> None:
    """nginx sends GOAWAY after its 50th request and finishes what it accepted (HTTP/1.1:
    ``Connection: close`` on the 50th answer); what it refused is sent again, and once two
    connections showed the limit, each later one is retired before it."""
    nginx = Nginx(tmp_path / "nginx", servers=2, keepalive_requests=50, h2=protocol == "h2c")
    upstreams.append(nginx)
    keys = HTTP1 if protocol == "http1" else ""
    node = node_for(node_process, tmp_path / "p", nginx.addresses, upstream_keys=keys)
    none_failed(h2load(node.outbound, "web", GETS), GETS, node)
    none_failed(h2load(node.outbound, "web", POSTS, data=post_body), POSTS, node)
    assert nginx.requests("GET") == GETS
    assert nginx.requests("POST") == POSTS  # none of them processed twice
    if protocol == "h2c":
        for address in nginx.addresses:
            node.wait_for_log(f"upstream {address} sent GOAWAY (error code 0, last_stream_id 99)")
            node.wait_for_log(f"upstream {address} recycled a connection after 50 requests")
        assert resent(node, "goaway") > 0
        assert 2 * len(nginx.addresses) <= goaways(node) < 10 * len(nginx.addresses)


def test_hypercorn_recycling_with_the_limit_set_loses_nothing(
    tmp_path: Path, node_process, upstreams, post_body: Path
) -> None:
    """Hypercorn drops the answers of streams it accepted before its GOAWAY
    (python-hyper/h2#1181): with ``max_requests_per_connection`` at its limit, meshnode
    retires each connection first, and Hypercorn never has to send one."""
    servers = [hypercorn(50), hypercorn(50)]
    upstreams.extend(servers)
    node = node_for(
        node_process,
        tmp_path / "p",
        [server.address for server in servers],
        upstream_keys="max_requests_per_connection = 50\n",
    )
    none_failed(h2load(node.outbound, "web", GETS), GETS, node)
    none_failed(h2load(node.outbound, "web", POSTS, data=post_body), POSTS, node)
    counts = [server.counts() for server in servers]
    assert sum(count.get("GET", 0) for count in counts) == GETS
    assert sum(count.get("POST", 0) for count in counts) == POSTS
    assert goaways(node) == 0


def test_hypercorn_recycling_is_learned_and_then_loses_nothing(
    tmp_path: Path, node_process, upstreams, post_body: Path
) -> None:
    """Without the limit set, the first connection Hypercorn recycles under load shows it
    (the answers it dropped), and from then on its connections are retired in time."""
    servers = [hypercorn(50), hypercorn(50)]
    upstreams.extend(servers)
    node = node_for(node_process, tmp_path / "p", [server.address for server in servers])
    learning = h2load(node.outbound, "web", 1000)
    for server in servers:
        node.wait_for_log(f"upstream {server.address} recycled a connection")
    recycled = goaways(node)
    assert recycled > 0, learning.output
    before = [server.counts() for server in servers]
    none_failed(h2load(node.outbound, "web", GETS), GETS, node)
    none_failed(h2load(node.outbound, "web", POSTS, data=post_body), POSTS, node)
    after = [server.counts() for server in servers]
    posts = sum(a.get("POST", 0) - b.get("POST", 0) for a, b in zip(after, before, strict=True))
    assert posts == POSTS
    assert goaways(node) == recycled  # none since


def test_graceful_upstream_restart_under_load_loses_nothing(
    tmp_path: Path, node_process, upstreams
) -> None:
    """SIGQUIT: nginx stops listening, sends GOAWAY and finishes what it accepted; a new
    nginx then takes the port. What the GOAWAY refused is sent again, and ``[retry]`` on
    connect failures bridges the time nothing listens. (Hypercorn's SIGTERM cuts the
    bodies of the answers it finishes last: no proxy can save those.)"""
    first = Nginx(tmp_path / "first")
    upstreams.append(first)
    node = node_for(
        node_process,
        tmp_path / "p",
        first.addresses,
        # Every request waiting while no process listens retries: a budget to match.
        extra='[retry]\nmax_retries = 10\nretry_on = ["connect-failure"]\n'
        'initial_delay = "50ms"\nmax_delay = "1s"\n'
        "[retry.budget]\nratio = 1.0\nmin_per_second = 1000.0\n",
    )
    result: list[Load] = []
    load = threading.Thread(target=lambda: result.append(h2load(node.outbound, "web", 6000)))
    load.start()
    while first.log.stat().st_size < 1000 * 60:  # some 1,000 requests in: under load
        assert load.is_alive(), "the load ended before the restart"
    first.quit()
    second = Nginx(tmp_path / "second", addresses=first.addresses)
    upstreams.append(second)
    load.join(120)
    none_failed(result[0], 6000, node)
    assert first.requests("GET") + second.requests("GET") == 6000
    assert second.requests("GET") > 0


def test_refused_streams_are_sent_again_and_counted(
    tmp_path: Path, node_process, upstreams, post_body: Path
) -> None:
    server = scripted("refuse", every=3)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    none_failed(h2load(node.outbound, "web", 3000), 3000, node)
    none_failed(h2load(node.outbound, "web", 1000, data=post_body), 1000, node)
    counts = server.counts()
    assert (counts["GET"], counts["POST"]) == (3000, 1000)
    assert counts["refused"] > 4000 // 4
    assert resent(node, "refused-stream") == counts["refused"]
    with urllib.request.urlopen(f"http://{node.admin}/admin/upstreams", timeout=10) as answer:
        report = json.load(answer)["upstreams"]["web"]
    assert report["resent"]["refused-stream"] == counts["refused"]
    with urllib.request.urlopen(f"http://{node.admin}/", timeout=10) as answer:
        page = answer.read().decode()
    assert f"0 GOAWAYs; {counts['refused']} requests sent again" in page


def test_resends_are_neither_tries_nor_failures(tmp_path: Path, node_process, upstreams) -> None:
    """Every request is refused once by each of two upstreams before one answers it: were
    resends failures, outlier detection would eject both; were they tries, the retry
    counts would show them."""
    servers = [scripted("refuse", 1), scripted("refuse", 1)]
    upstreams.extend(servers)
    node = node_for(
        node_process,
        tmp_path / "p",
        [server.address for server in servers],
        extra="[outlier_detection]\nconsecutive_failures = 3\nmax_ejection_percent = 100.0\n",
    )
    none_failed(h2load(node.outbound, "web", 1000), 1000, node)
    refused = sum(server.counts()["refused"] for server in servers)
    assert refused >= 1000
    assert resent(node, "refused-stream") == refused
    with urllib.request.urlopen(f"http://{node.admin}/admin/upstreams", timeout=10) as answer:
        report = json.load(answer)["upstreams"]["web"]
    assert report["tries"] == {"total": 1000, "retried_requests": 0, "recovered": 0}
    assert report["retries"]["retried"] == 0
    for endpoint in report["endpoints"]:
        assert (endpoint["ejections"], endpoint["failures"]) == (0, 0), endpoint


def test_a_second_goaway_with_a_lower_last_stream_id_is_honoured(
    tmp_path: Path, node_process, upstreams, post_body: Path
) -> None:
    """nghttp2-style shutdown: GOAWAY naming every stream, then one naming the last taken.
    The upstream ignores what came past the second: meshnode must send it again."""
    server = scripted("double-goaway", 20)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    none_failed(h2load(node.outbound, "web", 2000), 2000, node)
    none_failed(h2load(node.outbound, "web", 500, data=post_body), 500, node)
    counts = server.counts()
    assert (counts["GET"], counts["POST"]) == (2000, 500)
    assert resent(node, "goaway") > 0
    node.wait_for_log("sent GOAWAY (error code 0, last_stream_id 2147483647)")


def test_a_stale_h2_connection_costs_nothing(tmp_path: Path, node_process, upstreams) -> None:
    """The upstream closes each connection, without GOAWAY, as its second request arrives:
    a GET is sent again on a fresh connection; a POST, which it may have seen, is not."""
    server = scripted("stale-h2", 1)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    for _ in range(5):
        assert curl(node, "/x").stdout == b"ok\n200"
    assert resent(node, "stale-connection") == 4
    failed = curl(node, "/x", "--data-binary", "once").stdout
    assert failed.endswith(b"\n502")
    assert server.counts() == {"GET": 5}


def test_an_upstream_te_never_reaches_the_caller(tmp_path: Path, node_process, upstreams) -> None:
    """TE is a request's field alone (RFC 9113 8.2.2); Hypercorn, in its own process,
    answers with one."""
    server = hypercorn(1000)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    head = curl(node, "/te", "-D", "-").stdout.lower()
    assert head.startswith(b"http/2 200") and b"\nte:" not in head


def test_a_request_refused_again_and_again_fails_after_three_resends(
    tmp_path: Path, node_process, upstreams
) -> None:
    server = scripted("refuse", 1, "--always")
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    answer = curl(node, "/x").stdout
    assert answer.endswith(b"\n502")
    assert b"not sent again: already sent again 3 times" in answer
    assert server.counts() == {"refused": 4}
    assert resent(node, "refused-stream") == 3


def test_a_lowered_stream_limit_is_obeyed_and_what_it_refused_sent_again(
    tmp_path: Path, node_process, upstreams
) -> None:
    """After 100 requests the upstream's limit drops to 1 stream a connection, and the
    streams past it in flight are refused before meshnode could know: they are sent again,
    and meshnode opens more connections instead of more streams."""
    server = scripted("lower-streams", every=100)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    none_failed(h2load(node.outbound, "web", 2000), 2000, node)
    counts = server.counts()
    assert counts["GET"] == 2000
    assert resent(node, "refused-stream") == counts["refused"] > 0


def test_a_resent_post_of_1mib_arrives_whole_and_once(tmp_path: Path, node_process, upstreams):
    """Every second stream is refused once its whole body arrived: the 1 MiB body, kept
    within ``[retry] buffer``, goes again. Within the default buffer (64 KiB) it cannot,
    and the answer says why."""
    server = scripted("refuse-late", every=2)
    upstreams.append(server)
    body = tmp_path / "big"
    body.write_bytes(hashlib.sha256(b"seed").digest() * 32768)  # 1 MiB
    node = node_for(
        node_process, tmp_path / "p", [server.address], extra='[retry]\nbuffer = "2MiB"\n'
    )
    assert curl(node, "/first").stdout == b"ok\n200"
    answer = curl(node, "/digest", "--data-binary", f"@{body}").stdout
    assert answer == hashlib.sha256(body.read_bytes()).hexdigest().encode() + b"\n200"
    assert server.counts() == {"GET": 1, "POST": 1, "refused": 1}
    assert resent(node, "refused-stream") == 1

    default = node_for(node_process, tmp_path / "q", [server.address])
    assert curl(default, "/first").stdout == b"ok\n200"
    refused = curl(default, "/digest", "--data-binary", f"@{body}").stdout
    assert refused.endswith(b"\n502")
    assert b"its body outgrew the replay buffer" in refused
    assert server.counts() == {"GET": 2, "POST": 1, "refused": 2}


def test_a_stale_http1_keepalive_connection_costs_nothing(
    tmp_path: Path, node_process, upstreams
) -> None:
    """The upstream closes each idle keep-alive connection as the next request arrives:
    a GET is sent again on a fresh connection; a POST, which it may have seen, is not."""
    server = scripted("stale-http1")
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address], upstream_keys=HTTP1)
    for _ in range(5):
        assert curl(node, "/x").stdout == b"ok\n200"
    assert resent(node, "stale-connection") == 4
    failed = curl(node, "/x", "--data-binary", "once").stdout
    assert failed.endswith(b"\n502")
    assert b"connection closed before the response" in failed


@pytest.mark.parametrize(
    "fields",
    [
        [(b":authority", b"web"), (b"host", b"web"), (b"host", b"web")],
        [(b"host", b"web"), (b"host", b"web")],
    ],
    ids=["authority and two hosts", "two hosts"],
)
def test_a_repeated_host_is_refused_and_costs_other_callers_nothing(
    tmp_path: Path, node_process, upstreams, fields: list[tuple[bytes, bytes]]
) -> None:
    """Hypercorn's strict h2 answers a repeated host with GOAWAY PROTOCOL_ERROR, which would
    end the connection every caller of the upstream shares: the node refuses it (400) and
    never forwards it, while another caller's load runs on."""
    server = hypercorn(100_000)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    host, port = node.outbound.rsplit(":", 1)
    result: list[Load] = []
    bystander = threading.Thread(target=lambda: result.append(h2load(node.outbound, "web", 3000)))
    bystander.start()
    encoder = hpack.Encoder()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"), *fields]
    frames = [request_frame(n, request, encoder=encoder) for n in range(1, 40, 2)]
    exchange = trio.run(functools.partial(attack, Address(host, int(port)), frames, linger=2.0))
    bystander.join(120)
    none_failed(result[0], 3000, node)
    heads = [frame for frame in exchange.frames if frame.type == 0x1]
    assert len(heads) == 20  # every one answered (a 400), none lost
    assert hpack.Decoder().decode(heads[0].payload, raw=True)[0] == (b":status", b"400")
    assert exchange.goaway() is None
    assert server.counts() == {"GET": 3000}


def test_a_body_s_end_waits_for_an_upstream_that_took_the_window_below_zero(
    tmp_path: Path, node_process, upstreams
) -> None:
    """RFC 9113 6.9.2, against h2 in its own process: the upstream's smaller initial window
    takes the stream's send window below zero while the body is on its way; the body's
    end (an empty DATA frame) must wait for the WINDOW_UPDATE, which h2 would otherwise
    treat as a flow-control error and end the connection over."""
    server = scripted("shrink-window", 1)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    body = b"x" * 1000

    async def exchange() -> tuple[int, bytes]:
        client = await RawH2Client.connect(Address.parse(node.outbound))
        stream_id = await client.request("web", "/digest", end_stream=False)
        client.conn.send_data(stream_id, body)
        await client.flush()
        with trio.fail_after(10):
            while server.counts().get("shrink-acked", 0) < 1:
                await trio.sleep(0.01)  # another process: polled
        client.conn.end_stream(stream_id)
        await client.flush()
        # Time for an end sent too early to reach the upstream, which would count it.
        await trio.sleep(0.3)
        await client.request("web", "/_reopen")
        answer = b""
        with trio.fail_after(10):
            while True:
                for event in await client.receive():
                    if getattr(event, "stream_id", None) != stream_id:
                        continue
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        answer += event.data
                    elif isinstance(event, h2.events.StreamEnded):
                        await client.aclose()
                        return status, answer

    result = trio.run(exchange)
    assert result == (200, hashlib.sha256(body).hexdigest().encode())
    assert server.counts().get("flow-control-errors", 0) == 0


def test_a_malformed_answer_repeated_is_refused_each_time_and_a_good_one_still_relayed(
    tmp_path: Path, node_process, upstreams
) -> None:
    """An upstream (h2 in its own process) that sends the same malformed head over and
    over, on one connection: the node remembers its last verdict on a repeated answer, so
    the repeats must be refused as the first was (502, nothing of the head relayed), and
    a valid answer between them relayed."""
    server = scripted("bad-head", 1)
    upstreams.append(server)
    node = node_for(node_process, tmp_path / "p", [server.address])
    paths = ["/bad", "/bad", "/bad", "/ok", "/bad", "/bad"]
    statuses = [curl(node, path).stdout.rsplit(b"\n", 1)[1] for path in paths]
    assert statuses == [b"502", b"502", b"502", b"200", b"502", b"502"]
    assert server.counts()["bad-heads"] == 5
