"""Hot reload as an operator drives it: files, SIGHUP, the admin API and the CLI."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import trio

from meshnode.actors.supervisor import RestartPolicy
from meshnode.events import PolicyRejected, PolicyReloaded
from meshnode.node import Node
from meshnode.policy import load_policies
from tests.conftest import NodeProcess, answering, require, upstream_toml, write_policies
from tests.support.client import admin, get


async def next_of(events, kind: type):
    with trio.fail_after(10):
        while not isinstance(event := await events.receive(), kind):
            pass
    return event


async def test_admin_reload_applies_a_changed_endpoint(tmp_path, nursery, running) -> None:
    one, two = await answering(nursery, b"one"), await answering(nursery, b"two")
    directory = write_policies(tmp_path, {"api": upstream_toml("api", one)})
    node, addresses = await running(directory)
    assert await get(addresses.outbound[0], "api") == (200, b"one")
    write_policies(tmp_path, {"api": upstream_toml("api", two)})
    with node.bus.subscribe() as events:
        status, answer = await admin(addresses.admin[0], "POST", "/admin/reload")
        event = await next_of(events, PolicyReloaded)
    assert status == 200
    assert answer["applied"] is True
    assert answer["changes"] == {
        "added": [],
        "removed": [],
        "updated": ["api"],
        "restart_required": [],
    }
    assert (event.trigger, event.updated) == ("admin", ["api"])
    assert await get(addresses.outbound[0], "api") == (200, b"two")
    _, policies = await admin(addresses.admin[0], "GET", "/admin/policies")
    assert policies["version"] == answer["version"]
    assert policies["upstreams"]["api"]["discovery"]["endpoints"][0]["address"] == two
    assert policies["reloads"] == {"applied": 1, "unchanged": 0, "rejected": 0}


BROKEN = {
    "toml-syntax-error": ("[upstream\nname = 'api'\n", "api.toml: TOML syntax: Expected ']'"),
    "unknown-key": (None, "api.toml: upstream.colour: unknown key"),
    "bad-duration": (None, 'api.toml: timeout.request: expected a duration like "30s", got 5'),
    "truncated": (None, "api.toml: TOML syntax:"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_invalid_files_keep_the_old_policies(tmp_path, nursery, running, case: str) -> None:
    upstream = await answering(nursery, b"old")
    good = upstream_toml("api", upstream)
    directory = write_policies(tmp_path, {"api": good})
    node, addresses = await running(directory)
    version = node.policies.version
    text, expected = BROKEN[case]
    if case == "unknown-key":
        text = good.replace('tls = "none"', 'tls = "none"\ncolour = "blue"')
    elif case == "bad-duration":
        text = good + "[timeout]\nrequest = 5\n"
    elif case == "truncated":
        text = good[: good.index("endpoints") + 14]
    (directory / "api.toml").write_text(text)
    with node.bus.subscribe() as events:
        status, answer = await admin(addresses.admin[0], "POST", "/admin/reload")
        event = await next_of(events, PolicyRejected)
    assert status == 422
    assert answer["applied"] is False
    assert answer["version"] == version
    assert any(expected in line for line in answer["errors"]), answer["errors"]
    assert event.errors == answer["errors"]
    assert node.policies.version == version
    assert await get(addresses.outbound[0], "api") == (200, b"old")
    _, policies = await admin(addresses.admin[0], "GET", "/admin/policies")
    assert policies["last_error"]["errors"] == answer["errors"]
    assert policies["last_error"]["trigger"] == "admin"


async def test_a_file_deleted_mid_reload_is_an_error_not_a_removal(
    tmp_path, nursery, running
) -> None:
    upstream = await answering(nursery, b"still here")
    directory = write_policies(tmp_path, {"api": upstream_toml("api", upstream)})
    _, addresses = await running(directory)
    (directory / "gone.toml").symlink_to("deleted-between-listing-and-reading.toml")
    status, answer = await admin(addresses.admin[0], "POST", "/admin/reload")
    assert status == 422
    assert answer["errors"] == [f"{directory}/gone.toml: cannot read: No such file or directory"]
    assert await get(addresses.outbound[0], "api") == (200, b"still here")


async def test_a_change_in_the_directory_reloads_by_itself(tmp_path, nursery, running) -> None:
    one, two = await answering(nursery, b"one"), await answering(nursery, b"two")
    directory = write_policies(tmp_path, {"api": upstream_toml("api", one)})
    node, addresses = await running(directory, watch=True)
    with node.bus.subscribe() as events:
        staged = directory / ".api.toml.new"
        staged.write_text(upstream_toml("api", two))
        os.replace(staged, directory / "api.toml")
        event = await next_of(events, PolicyReloaded)
    assert event.trigger == "file-change"
    assert await get(addresses.outbound[0], "api") == (200, b"two")


async def test_upstreams_added_and_removed(tmp_path, nursery, running, hypercorn_upstream) -> None:
    directory = write_policies(tmp_path, {"old": upstream_toml("old", hypercorn_upstream)})
    node, addresses = await running(directory)
    async with trio.open_nursery() as requests:
        in_flight: list[tuple[int, bytes]] = []

        async def slow_request() -> None:
            in_flight.append(await get(addresses.outbound[0], "old", "/slow/1"))

        requests.start_soon(slow_request)
        with trio.fail_after(10):
            while not node.groups["old"].picker.in_flight:
                await trio.sleep(0.01)
        (directory / "old.toml").unlink()
        write_policies(tmp_path, {"new": upstream_toml("new", hypercorn_upstream)})
        status, answer = await admin(addresses.admin[0], "POST", "/admin/reload")
        assert (status, answer["changes"]["added"], answer["changes"]["removed"]) == (
            200,
            ["new"],
            ["old"],
        )
        status, _ = await get(addresses.outbound[0], "old")
        assert status == 404  # no new requests for a removed upstream...
        assert await get(addresses.outbound[0], "new") == (200, b"hello from the test upstream")
    assert in_flight == [(200, b"slow answer")]  # ...but the one in flight finished


async def test_crashing_actor_is_reported_and_the_upstream_keeps_serving(
    tmp_path, nursery, running
) -> None:
    upstream = await answering(nursery, b"fine")
    directory = write_policies(tmp_path, {"api": upstream_toml("api", upstream)})
    node, addresses = await running(directory)
    node.groups["api"].inject_fault("balancer")
    assert await get(addresses.outbound[0], "api") == (200, b"fine")
    with trio.fail_after(10):
        while True:
            _, report = await admin(addresses.admin[0], "GET", "/admin/upstreams")
            if report["upstreams"]["api"]["actor_restarts"]["balancer"] == 1:
                break
            await trio.sleep(0.05)
    api = report["upstreams"]["api"]
    assert api["failed"] is False
    assert api["endpoints"][0]["address"] == upstream
    assert await get(addresses.outbound[0], "api") == (200, b"fine")


def test_sighup_reloads(tmp_path, node_process) -> None:
    directory = tmp_path / "p"
    write_policies(directory, {"api": upstream_toml("api", "127.0.0.1:9")})
    node: NodeProcess = node_process(directory, "--no-watch")
    write_policies(directory, {"api": upstream_toml("api", "127.0.0.1:10")})
    node.process.send_signal(signal.SIGHUP)
    assert "updated ['api']" in node.wait_for_log("policies reloaded (sighup)")


def test_reload_command(tmp_path, node_process) -> None:
    directory = tmp_path / "p"
    write_policies(directory, {"api": upstream_toml("api", "127.0.0.1:9")})
    node: NodeProcess = node_process(directory, "--no-watch")
    admin_url = f"http://{node.admin}"

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshnode", "reload", "--admin", admin_url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    write_policies(directory, {"api": upstream_toml("api", "127.0.0.1:10")})
    result = reload()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("policies reloaded: version ")
    assert result.stdout.rstrip().endswith("(updated api)")
    (directory / "api.toml").write_text("[upstream\n")
    result = reload()
    assert result.returncode == 1
    assert "policies rejected; version" in result.stderr
    assert f"  {directory}/api.toml: TOML syntax: " in result.stderr
    node.stop()
    result = reload()
    assert result.returncode == 2
    assert result.stderr.startswith(f"meshnode: cannot reach the admin API at {admin_url}: ")
    assert len(result.stderr.splitlines()) == 1


def test_reloads_under_continuous_load_fail_no_request(
    tmp_path, node_process, start_nghttpd
) -> None:
    """h2load runs while endpoints change, an upstream is added and one removed."""
    first, second = start_nghttpd(), start_nghttpd()
    directory = tmp_path / "p"
    write_policies(
        directory, {"api": upstream_toml("api", first), "spare": upstream_toml("spare", first)}
    )
    node: NodeProcess = node_process(directory)
    load = subprocess.Popen(
        [
            require("h2load"),
            "-n",
            "30000",
            "-c",
            "4",
            "-m",
            "10",
            "-H",
            ":authority: api",
            f"http://{node.outbound}/index.html",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    changes = [
        {"api": upstream_toml("api", second)},
        {"api": upstream_toml("api", first, second), "extra": upstream_toml("extra", second)},
        {"api": upstream_toml("api", first)},
        {"api": upstream_toml("api", second, first)},
    ]
    applied = []
    for change in changes:
        write_policies(directory, change)
        if change is changes[1]:
            (directory / "spare.toml").unlink()
        answer = subprocess.run(
            [
                *(require("curl"), "-s", "-X", "POST", "-H", "x-meshnode-admin: 1"),
                f"http://{node.admin}/admin/reload",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        applied.append(json.loads(answer.stdout)["applied"])
        time.sleep(0.3)  # pacing: let traffic flow on each policy for a while
    assert load.poll() is None, "the load ended before the reloads did: raise -n"
    out, _ = load.communicate(timeout=120)
    assert applied == [True, True, True, True]
    assert "30000 succeeded, 0 failed, 0 errored, 0 timeout" in out, out
    report = json.loads(
        subprocess.run(
            [require("curl"), "-s", f"http://{node.admin}/admin/upstreams"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )
    assert sorted(report["upstreams"]) == ["api", "extra"]
    assert [e["address"] for e in report["upstreams"]["api"]["endpoints"]] == [second, first]


async def test_a_request_in_flight_keeps_the_policy_it_started_with(
    tmp_path, nursery, running, hypercorn_upstream
) -> None:
    strict = upstream_toml("api", hypercorn_upstream, extra='[timeout]\nrequest = "500ms"\n')
    directory = write_policies(tmp_path, {"api": strict})
    node, addresses = await running(directory)
    async with trio.open_nursery() as requests:
        answers: list[tuple[int, bytes]] = []

        async def slow_request() -> None:
            answers.append(await get(addresses.outbound[0], "api", "/slow/1"))

        requests.start_soon(slow_request)
        with trio.fail_after(10):
            while not node.groups["api"].picker.in_flight:
                await trio.sleep(0.01)
        relaxed = upstream_toml("api", hypercorn_upstream, extra='[timeout]\nrequest = "5s"\n')
        write_policies(tmp_path, {"api": relaxed})
        assert (await node.reload("test")).applied
    assert answers[0][0] == 504  # timed out on the 500 ms it started with
    assert await get(addresses.outbound[0], "api", "/slow/1") == (200, b"slow answer")


async def test_a_crash_looping_critical_upstream_fails_readiness(tmp_path, nursery) -> None:
    upstream = await answering(nursery, b"ok")
    critical = upstream_toml("api", upstream).replace(
        'tls = "none"', 'tls = "none"\ncritical = true'
    )
    policies = load_policies(write_policies(tmp_path, {"api": critical}))
    node = Node(
        policies,
        restart_policy=RestartPolicy(initial_backoff=0.01, max_backoff=0.05, storm_limit=2),
        poll_interval=None,
    )
    addresses = await nursery.start(functools.partial(node.run, handle_signals=False))
    assert (await admin(addresses.admin[0], "GET", "/health/ready"))[0] == 200
    for _ in range(3):
        node.groups["api"].inject_fault("breaker")
        with trio.fail_after(10):
            while node.groups["api"].breaker.inbox_recv.statistics().current_buffer_used:
                await trio.sleep(0.01)
    status, health = await admin(addresses.admin[0], "GET", "/health/ready")
    assert status == 503
    check = next(c for c in health["checks"] if c["name"] == "upstream:api")
    assert (check["status"], check["message"]) == ("unhealthy", "its actors are crash-looping")
    assert await get(addresses.outbound[0], "api") == (200, b"ok")  # and it still serves
