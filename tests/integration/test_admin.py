"""The admin plane as operators and Prometheus use it: metrics, events, CLI, logs, tokens."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio_websocket

from meshnode.node import Node
from meshnode.policy import load_policies
from meshnode.resilience.core.breaker import Override
from tests.conftest import NodeProcess, answering, require, upstream_toml, write_policies
from tests.support.client import admin, get
from tests.support.commands import meshnode


async def test_metrics_pass_promtool_and_counters_move(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    extra = "[circuit_breaker]\nfailure_threshold = 3\n"
    _, addresses = await running(
        write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    )
    for _ in range(3):
        await get(addresses.outbound[0], "api")
    await get(addresses.outbound[0], "nowhere")
    result = await trio.run_process(
        [require("curl"), "-s", "-D", "-", f"http://{addresses.admin[0]}/metrics"],
        capture_stdout=True,
        check=True,
    )
    head, _, text = result.stdout.decode().partition("\r\n\r\n")
    assert "content-type: text/plain; version=0.0.4" in head.lower()
    check = await trio.run_process(
        [require("promtool"), "check", "metrics"],
        stdin=text.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert 'meshnode_requests_total{code="200",upstream="api"} 3.0' in text
    assert 'meshnode_requests_total{code="404",upstream="(none)"} 1.0' in text
    assert 'meshnode_request_duration_seconds_count{upstream="api"} 3.0' in text
    assert 'meshnode_breaker_state{upstream="api"} 0.0' in text
    assert 'meshnode_endpoints{state="healthy",upstream="api"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    for name in (
        "meshnode_breaker_rejected_total",
        "meshnode_retries_total",
        "meshnode_rate_limited_total",
        "meshnode_policy_reloads_total",
        "meshnode_actor_restarts_total",
        "meshnode_fallbacks_total",
    ):
        assert f"# TYPE {name} counter" in text


async def receive_until(websocket, kind: str) -> dict:
    with trio.fail_after(10):
        while (event := json.loads(await websocket.get_message()))["type"] != kind:
            pass
    return event


async def test_events_reach_every_subscriber(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    _, addresses = await running(write_policies(tmp_path, {"api": upstream_toml("api", address)}))
    url = f"ws://{addresses.admin[0]}/admin/events"
    async with (
        trio_websocket.open_websocket_url(url) as first,
        trio_websocket.open_websocket_url(url) as second,
    ):
        await trio.testing.wait_all_tasks_blocked()
        await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=open")
        for websocket in (first, second):
            event = await receive_until(websocket, "breaker-state-change")
            assert (event["upstream"], event["from"], event["to"]) == ("api", "closed", "open")
            assert event["timestamp"] > 0
        write_policies(
            tmp_path, {"api": upstream_toml("api", address, extra='[timeout]\nrequest = "3s"\n')}
        )
        await admin(addresses.admin[0], "POST", "/admin/reload")
        for websocket in (first, second):
            event = await receive_until(websocket, "policy-reloaded")
            assert event["updated"] == ["api"]


async def test_a_stalled_subscriber_never_slows_requests(tmp_path, nursery) -> None:
    address = await answering(nursery, b"ok")
    policies = load_policies(write_policies(tmp_path, {"api": upstream_toml("api", address)}))
    node = Node(policies, poll_interval=None)
    addresses = await nursery.start(functools.partial(node.run, handle_signals=False))
    url = f"ws://{addresses.admin[0]}/admin/events"
    async with trio_websocket.open_websocket_url(url) as stalled:
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3000):  # far more than the subscriber's queue, never read meanwhile
            node.groups["api"].breaker.force(Override.OPEN)
            node.groups["api"].breaker.force(Override.AUTO)
        with trio.fail_after(5):
            assert await get(addresses.outbound[0], "api") == (200, b"ok")
        kinds = []
        with trio.fail_after(10):
            while "events-missed" not in kinds:
                kinds.append(json.loads(await stalled.get_message())["type"])


@pytest.fixture
def live_node(tmp_path, node_process, start_nghttpd) -> NodeProcess:
    directory = tmp_path / "p"
    write_policies(directory, {"web": upstream_toml("web", start_nghttpd())})
    return node_process(directory)


def test_status_and_upstreams_commands(live_node: NodeProcess) -> None:
    admin_url = f"http://{live_node.admin}"
    result = meshnode("status", "--admin", admin_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "status:     healthy"
    assert "upstreams:  web" in result.stdout
    as_json = json.loads(meshnode("status", "--admin", admin_url, "--json").stdout)
    assert set(as_json) == {"health", "policies"}
    result = meshnode("upstreams", "--admin", admin_url)
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "UPSTREAM",
        "BREAKER",
        "ENDPOINTS",
        "IN-FLIGHT",
        "REQUESTS",
        "5XX",
        "RETRIES",
        "RESTARTS",
        "STATE",
    ]
    assert row.split()[:3] == ["web", "closed", "1/1"]
    report = json.loads(meshnode("upstreams", "--admin", admin_url, "--json").stdout)
    assert report["upstreams"]["web"]["strategy"] == "round-robin"


def test_mutating_commands(live_node: NodeProcess) -> None:
    admin_url = f"http://{live_node.admin}"
    result = meshnode("breakers", "force", "web", "open", "--admin", admin_url)
    assert (result.returncode, result.stdout.strip()) == (0, "breaker of web: open (override open)")
    result = meshnode("breakers", "force", "nope", "open", "--admin", admin_url)
    assert (result.returncode, result.stderr.strip()) == (1, "meshnode: no upstream named 'nope'")
    result = meshnode("sessions", "clear", "client-1", "--admin", admin_url, "--json")
    assert json.loads(result.stdout) == {"client": "client-1", "forgotten": 0}
    result = meshnode("drain", "--admin", admin_url)
    assert result.returncode == 0
    result = meshnode("status", "--admin", admin_url)
    assert result.returncode == 1  # draining: not ready, but still answering
    assert "  drain: unhealthy (draining)" in result.stdout


def test_events_command(live_node: NodeProcess) -> None:
    admin_url = f"http://{live_node.admin}"
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshnode",
            "events",
            "--admin",
            admin_url,
            "--json",
            "--count",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    env = {**os.environ, "MESHNODE_ADMIN": admin_url}  # the variable instead of --admin
    states = itertools.cycle(["open", "auto"])
    for _ in range(50):  # until the follower, subscribed at some point, has seen two
        if follower.poll() is not None:
            break
        assert meshnode("breakers", "force", "web", next(states), env=env).returncode == 0
        time.sleep(0.1)
    out, _ = follower.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["breaker-state-change"] * 2


def test_an_unreachable_node_is_one_line_and_exit_2() -> None:
    for command in (
        ["status"],
        ["upstreams"],
        ["reload"],
        ["drain"],
        ["events"],
        ["breakers", "force", "x", "open"],
        ["sessions", "clear", "c"],
    ):
        result = meshnode(*command, "--admin", "http://127.0.0.1:9")
        assert result.returncode == 2, command
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "http://127.0.0.1:9" in result.stderr


async def test_access_log_lines(tmp_path, nursery, running, caplog) -> None:
    address = await answering(nursery, b"ok")
    extra = '[fallback]\nkind = "static"\nstatus = 200\nbody = "later"\n'
    node_toml = tmp_path / "node.toml"
    write_policies(tmp_path, {"api": upstream_toml("api", address, extra=extra)})
    node_toml.write_text(
        node_toml.read_text().replace(
            'drain_timeout = "5s"', 'drain_timeout = "5s"\naccess_log = true'
        )
    )
    _, addresses = await running(tmp_path)
    caplog.set_level(logging.INFO, logger="meshnode.access")
    await get(addresses.outbound[0], "api", "/ok", "-H", "x-request-id: r-1")
    await get(addresses.outbound[0], "nowhere", "/x")
    await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=open")
    await get(addresses.outbound[0], "api", "/later")
    records = [r for r in caplog.records if r.name == "meshnode.access"]
    fields = [r.access for r in records]  # type: ignore[attr-defined]
    assert [(f["path"], f["status"], f["upstream"], f["error"]) for f in fields] == [
        ("/ok", 200, "api", None),
        ("/x", 404, None, "no-route"),
        ("/later", 200, "api", "fallback:static"),
    ]
    assert fields[0]["request_id"] == "r-1" and fields[0]["tries"] == 1
    assert fields[0]["endpoint"] == address
    assert records[0].getMessage().startswith("GET api/ok 200 upstream=api endpoint=")


def test_json_logs(tmp_path, node_process, start_nghttpd) -> None:
    directory = tmp_path / "p"
    write_policies(directory, {"web": upstream_toml("web", start_nghttpd())})
    node = node_process(directory, "--log-format", "json")
    line = json.loads(node.ready_line)
    assert line["level"] == "info" and line["logger"] == "meshnode.node"
    assert line["message"].startswith("meshnode ready:")


async def test_a_token_guards_mutating_calls(tmp_path, nursery, running) -> None:
    address = await answering(nursery, b"ok")
    write_policies(tmp_path, {"api": upstream_toml("api", address)})
    (tmp_path / "token").write_text("s3cret\n")
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(node_toml.read_text() + 'token_file = "token"\n')
    _, addresses = await running(tmp_path)
    status, answer = await admin(addresses.admin[0], "POST", "/admin/breakers/api?state=open")
    assert (status, answer) == (401, {"error": "a valid admin token is required"})
    assert (await admin(addresses.admin[0], "GET", "/admin/upstreams"))[0] == 200
    result = await trio.run_process(
        [
            require("curl"),
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer s3cret",
            "-H",
            "x-meshnode-admin: 1",
            f"http://{addresses.admin[0]}/admin/breakers/api?state=open",
        ],
        capture_stdout=True,
        check=True,
    )
    assert result.stdout == b"200"


def test_a_non_loopback_admin_needs_a_token(tmp_path: Path) -> None:
    write_policies(tmp_path, {})
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(
        node_toml.read_text().replace(
            '[admin]\naddress = "127.0.0.1:0"', '[admin]\naddress = "0.0.0.0:0"'
        )
    )
    result = meshnode("policy", "validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        f"{tmp_path}/node.toml: admin.token_file: required when the admin listener is not "
        "on loopback (0.0.0.0:0)"
    ) in result.stderr


def test_the_documented_alert_rules_are_valid() -> None:
    rules = Path(__file__).parents[2] / "docs" / "prometheus" / "meshnode-alerts.yml"
    result = subprocess.run(
        [require("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def _curl(*arguments: str) -> tuple[int, str]:
    """Status and body of one request to the admin listener, as curl sends it."""
    result = subprocess.run(
        [require("curl"), "-s", "--max-time", "3", "-w", "\n%{http_code}", *arguments],
        check=False,  # the 101 of a WebSocket ends at the time limit
        capture_output=True,
        text=True,
        timeout=10,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_a_web_page_cannot_change_the_node(live_node: NodeProcess) -> None:
    """A cross-site form or fetch can POST without asking first, but never with a custom
    header; and a browser says where it comes from (docs/security.md)."""
    base = f"http://{live_node.admin}"
    forms = ["-X", "POST", "-H", "content-type: application/x-www-form-urlencoded"]
    status, body = _curl(*forms, f"{base}/admin/breakers/web?state=open")
    assert status == 403 and "x-meshnode-admin" in body
    status, body = _curl(
        *forms,
        "-H",
        "x-meshnode-admin: 1",
        "-H",
        "Origin: http://evil.example",
        f"{base}/admin/drain",
    )
    assert status == 403 and "evil.example" in body
    assert _curl(f"{base}/health/ready")[0] == 200  # not drained, breaker untouched
    assert (
        json.loads(_curl(f"{base}/admin/upstreams")[1])["upstreams"]["web"]["breaker"]["state"]
        == "closed"
    )
    own = f"Origin: {base}"
    assert (
        _curl(
            "-X",
            "POST",
            "-H",
            "x-meshnode-admin: 1",
            "-H",
            own,
            f"{base}/admin/breakers/web?state=open",
        )[0]
        == 200
    )
    assert (
        _curl(
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            f"{base}/admin/breakers/web?state=auto",
        )[0]
        == 200
    )
    assert meshnode("breakers", "force", "web", "closed", "--admin", base).returncode == 0


def test_dns_rebinding_finds_no_admin_plane(tmp_path: Path, node_process, start_nghttpd) -> None:
    directory = tmp_path / "p"
    write_policies(directory, {"web": upstream_toml("web", start_nghttpd())})
    node_toml = directory / "node.toml"
    node_toml.write_text(
        node_toml.read_text().replace(
            "[admin]\n", '[admin]\nallowed_hosts = ["Mesh-Admin.internal"]\n'
        )
    )
    node = node_process(directory)
    port = node.admin.rsplit(":", 1)[1]
    url = f"http://{node.admin}/admin/upstreams"
    status, body = _curl("-H", f"Host: rebind.evil.example:{port}", url)
    assert status == 421 and "allowed_hosts" in body
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"mesh-admin.internal:{port}"):
        assert _curl("-H", f"Host: {host}", url)[0] == 200, host


def test_the_event_stream_refuses_another_origin(live_node: NodeProcess) -> None:
    upgrade = [
        *("-H", "Connection: Upgrade", "-H", "Upgrade: websocket"),
        *("-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    url = f"http://{live_node.admin}/admin/events"
    assert _curl(*upgrade, "-H", "Origin: http://evil.example", url)[0] == 403
    assert _curl(*upgrade, "-H", f"Origin: http://{live_node.admin}", url)[0] == 101
