"""A fleet on a real etcd (Debian's etcd-server): nodes as processes of their own take
their upstream policies from the store, register themselves, and roll out with canaries;
``meshnode policy push`` and ``meshnode fleet status`` as an operator runs them."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from meshnode.fleet.rollout import fleet_status, push
from meshnode.fleet.store import StoreAccess, StoreError
from tests.conftest import NodeProcess, require, serve_asgi, upstream_toml
from tests.support.commands import meshnode as run_meshnode
from tests.support.etcd import Etcd
from tests.support.fake_consul import FakeConsul
from tests.support.fleet import fleet_node_toml, push_dir, wait_until
from tests.support.upstream_processes import PythonUpstream, hypercorn

pytestmark = pytest.mark.integration

PREFIX = "/meshnode/policies"
TTL = 3  # seconds a dead node stays in the registry


@pytest.fixture
def service() -> Iterator[PythonUpstream]:
    started = hypercorn(100_000)
    yield started
    started.stop()


def store_url(etcd: Etcd) -> str:
    return f"etcd://127.0.0.1:{etcd.client_port}{PREFIX}"


def node_dir(tmp_path: Path, name: str, etcd: Etcd, *local: tuple[str, str]) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "node.toml").write_text(fleet_node_toml(name, store_url(etcd), TTL))
    for file_name, text in local:
        (directory / file_name).write_text(text)
    return directory


def version_dir(tmp_path: Path, label: str, **upstreams: str) -> Path:
    return push_dir(tmp_path, label, '[node]\nname = "operator"\n', **upstreams)


def meshnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_meshnode(*args, check=check)


def pushed(directory: Path, etcd: Etcd, *options: str) -> str:
    result = meshnode("policy", "push", str(directory), "--to", store_url(etcd), *options)
    return result.stdout.strip().splitlines()[-1].split()[1]  # "version V is the fleet's"


def status(etcd: Etcd) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        meshnode("fleet", "status", "--store", store_url(etcd), "--json").stdout
    )
    return found


def good_version(tmp_path: Path, etcd: Etcd, service: PythonUpstream) -> str:
    """A first valid version, pushed and in force on every node registered."""
    good = pushed(version_dir(tmp_path, "good", api=upstream_toml("api", service.address)), etcd)
    wait_until(lambda: set(node_versions(etcd).values()) == {good}, 5, "the good version")
    return good


def node_versions(etcd: Etcd) -> dict[str, str | None]:
    """What the registry says each node runs, read straight from etcd (no process started:
    a poll this cheap measures the rollout, not the CLI's start)."""
    key = f"{PREFIX}/registry/".encode()
    answer = httpx.post(
        f"{etcd.url}/v3/kv/range",
        json={"key": _b64(key), "range_end": _b64(key[:-1] + b"0")},  # "/" + 1 is "0"
        timeout=5,
    ).json()
    entries = [json.loads(base64.b64decode(kv["value"])) for kv in answer.get("kvs", [])]
    return {entry["name"]: entry.get("policy_version") for entry in entries}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def get(node: NodeProcess, authority: str = "api") -> int:
    result = subprocess.run(
        [
            *(require("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}"),
            *("--http2-prior-knowledge", "-H", f"host: {authority}", f"http://{node.outbound}/"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return int(result.stdout or 0)


@pytest.fixture
def two_nodes(tmp_path, etcd, node_process) -> tuple[NodeProcess, NodeProcess]:
    return (
        node_process(node_dir(tmp_path, "node-a", etcd)),
        node_process(node_dir(tmp_path, "node-b", etcd)),
    )


def test_a_push_reaches_every_node_within_two_seconds_and_no_request_fails(
    tmp_path, etcd, service, two_nodes
) -> None:
    a, b = two_nodes
    first = pushed(version_dir(tmp_path, "1", api=upstream_toml("api", service.address)), etcd)
    wait_until(lambda: node_versions(etcd) == {"node-a": first, "node-b": first}, 5, "v1")
    assert get(a) == get(b) == 200
    load = subprocess.Popen(
        [
            *(require("h2load"), "-n", "3000", "-c", "4", "-m", "4"),
            *("-H", ":authority: api", f"http://{a.outbound}/"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    second_policy = upstream_toml("api", service.address, extra='[timeout]\nrequest = "7s"\n')
    second = pushed(version_dir(tmp_path, "2", api=second_policy), etcd)
    took = wait_until(
        lambda: node_versions(etcd) == {"node-a": second, "node-b": second}, 2, "v2 everywhere"
    )
    output, _ = load.communicate(timeout=120)
    assert "3000 succeeded, 0 failed, 0 errored, 0 timeout" in output, output
    assert took < 2
    assert status(etcd)["current"] == second
    table = meshnode("fleet", "status", "--store", store_url(etcd)).stdout
    assert f"fleet version: {second}; 2 node(s)" in table
    assert "node-a" in table and "not on the pushed version" not in table


def test_a_bad_policy_is_refused_by_push_and_by_every_node(
    tmp_path, etcd, service, two_nodes
) -> None:
    a, _ = two_nodes
    good = good_version(tmp_path, etcd, service)
    bad = version_dir(tmp_path, "bad", api='[upstream]\nname = "api"\n[retry]\nmax_retries = -1\n')
    refused = meshnode("policy", "push", str(bad), "--to", store_url(etcd), check=False)
    assert refused.returncode == 1
    assert f"{bad}/api.toml: discovery: required key is missing" in refused.stderr
    etcd.put(f"{PREFIX}/versions/straight-in/api.toml", "[upstream]\nname = 1\n")
    etcd.put(f"{PREFIX}/current", "straight-in")
    wait_until(
        lambda: all(
            (e.get("rejected") or {}).get("version") == "straight-in"
            for e in status(etcd)["nodes"].values()
        ),
        5,
        "every node reports the refusal",
    )
    assert set(node_versions(etcd).values()) == {good}  # the old policy stays
    assert get(a) == 200
    entry = status(etcd)["nodes"]["node-a"]
    assert any("upstream.name: expected a string" in line for line in entry["rejected"]["errors"])
    table = meshnode("fleet", "status", "--store", store_url(etcd)).stdout
    assert "not on the pushed version straight-in" in table and "refused straight-in" in table


def test_nodes_serve_through_a_store_outage_restart_from_their_snapshot_and_catch_up(
    tmp_path, etcd, service, node_process
) -> None:
    directory = node_dir(tmp_path, "node-a", etcd)
    node = node_process(directory)
    first = pushed(version_dir(tmp_path, "1", api=upstream_toml("api", service.address)), etcd)
    wait_until(lambda: node_versions(etcd) == {"node-a": first}, 5, "v1")
    etcd.stop()
    assert get(node) == 200
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    restarted = node_process(directory)  # the store is down: it starts from its snapshot
    assert get(restarted) == 200
    etcd.start()
    wait_until(lambda: node_versions(etcd) == {"node-a": first}, 10, "registered again")
    second_policy = upstream_toml("api", service.address, extra='[timeout]\nrequest = "7s"\n')
    second = pushed(version_dir(tmp_path, "2", api=second_policy), etcd)
    wait_until(lambda: node_versions(etcd) == {"node-a": second}, 5, "caught up")


def test_a_dead_node_leaves_the_registry_after_its_ttl(tmp_path, etcd, two_nodes) -> None:
    _, b = two_nodes
    wait_until(lambda: set(status(etcd)["nodes"]) == {"node-a", "node-b"}, 5, "both registered")
    b.process.send_signal(signal.SIGKILL)
    took = wait_until(lambda: set(status(etcd)["nodes"]) == {"node-a"}, TTL + 5, "b gone")
    assert took >= TTL - 1  # its lease ran out; nobody deleted it


def test_a_canary_rollout_stops_when_the_canary_refuses_and_goes_on_when_it_is_ready(
    tmp_path, etcd, service, node_process
) -> None:
    extra = ("extra.toml", upstream_toml("extra", service.address))  # node-b's own upstream
    a = node_process(node_dir(tmp_path, "node-a", etcd))
    node_process(node_dir(tmp_path, "node-b", etcd, extra))
    first = pushed(version_dir(tmp_path, "1", api=upstream_toml("api", service.address)), etcd)
    wait_until(lambda: set(node_versions(etcd).values()) == {first}, 5, "v1")
    clashing = version_dir(
        tmp_path,
        "2",
        api=upstream_toml("api", service.address),
        extra=upstream_toml("extra", service.address),
    )
    stopped = meshnode(
        *("policy", "push", str(clashing), "--to", store_url(etcd)),
        *("--canary", "node-b", "--wait", "20s"),
        check=False,
    )
    assert stopped.returncode == 2, stopped.stderr
    assert "canary node-b refused version" in stopped.stderr
    assert "'extra' is also defined in" in stopped.stderr
    assert status(etcd)["current"] == first
    assert node_versions(etcd) == {"node-a": first, "node-b": first}
    third = pushed(
        version_dir(tmp_path, "3", api=upstream_toml("api", service.address, extra="")),
        etcd,
        *("--canary", "node-a", "--wait", "20s"),
    )
    wait_until(lambda: set(node_versions(etcd).values()) == {third}, 5, "v3 everywhere")
    assert get(a) == 200


def test_a_store_answering_megabytes_is_refused_and_the_node_keeps_serving(
    tmp_path, etcd, service, two_nodes
) -> None:
    a, _ = two_nodes
    good = good_version(tmp_path, etcd, service)
    garbage = "#" * (1024 * 1024)
    for index in range(10):  # 10 MiB of garbage, as keys etcd takes one by one
        etcd.put(f"{PREFIX}/versions/huge/{index}.toml", garbage)
    etcd.put(f"{PREFIX}/current", "huge")
    wait_until(
        lambda: "MiB: refused" in str(status(etcd)["nodes"]["node-a"].get("rejected")),
        10,
        "the refusal reported",
    )
    assert get(a) == 200
    assert node_versions(etcd)["node-a"] == good


async def test_a_fleet_on_consul_with_an_acl_token(tmp_path, nursery, running, service) -> None:
    consul = FakeConsul(token="s3cret")
    url = f"consul://{await serve_asgi(nursery, consul)}{PREFIX}"
    directory = tmp_path / "node-a"
    directory.mkdir()
    (directory / "token").write_text("s3cret\n")
    (directory / "node.toml").write_text(
        f'[node]\nname = "node-a"\npolicy_source = "{url}"\n'
        '[listeners.outbound]\naddress = "127.0.0.1:0"\n[admin]\naddress = "127.0.0.1:0"\n'
        '[fleet]\ntoken_file = "token"\n'
    )
    node, addresses = await running(directory)
    assert node.fleet is not None
    access = StoreAccess(url, token_file=str(directory / "token"))
    pushing = version_dir(tmp_path, "1", api=upstream_toml("api", service.address))
    version = await push(access, pushing, say=lambda line: None)
    with trio.fail_after(10):
        while node.fleet.version != version:
            await trio.sleep(0.05)
    answered = await trio.run_process(
        [
            *(require("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}"),
            *("--http2-prior-knowledge", "-H", "host: api", f"http://{addresses.outbound[0]}/"),
        ],
        capture_stdout=True,
    )
    assert answered.stdout == b"200"
    with trio.fail_after(10):
        while True:  # the registry entry follows within a report interval
            status = await fleet_status(access)
            if status["nodes"].get("node-a", {}).get("policy_version") == version:
                break
            await trio.sleep(0.05)
    assert status["current"] == version and status["nodes"]["node-a"]["ready"] is True
    session = consul.kv[f"{PREFIX.lstrip('/')}/registry/node-a"].session
    assert session in consul.sessions  # held by the node's session, gone with it
    with pytest.raises(StoreError, match="403"):
        await fleet_status(StoreAccess(url))  # no token, no fleet


def test_the_store_is_reached_over_tls_with_client_certificates(
    tmp_path, node_process, service
) -> None:
    ca = trustme.CA()
    tls = tmp_path / "tls"
    tls.mkdir()
    ca.cert_pem.write_to_path(tls / "ca.pem")
    for name, identity in (("server", "127.0.0.1"), ("client", "node-a.fleet")):
        issued = ca.issue_cert(identity)
        issued.cert_chain_pems[0].write_to_path(tls / f"{name}.pem")
        issued.private_key_pem.write_to_path(tls / f"{name}-key.pem")
    server = (str(tls / "ca.pem"), str(tls / "server.pem"), str(tls / "server-key.pem"))
    etcd = Etcd(tmp_path / "etcd", tls=server, client=(server[1], server[2]))
    etcd.start()
    try:
        directory = node_dir(tmp_path, "node-a", etcd)
        with (directory / "node.toml").open("a") as node_toml:
            node_toml.write(
                f'ca_file = "{tls}/ca.pem"\ncert_file = "{tls}/client.pem"\n'
                f'key_file = "{tls}/client-key.pem"\n'
            )
        node_process(directory)
        material = ("--ca-file", str(tls / "ca.pem"), "--cert-file", str(tls / "client.pem"))
        material += ("--key-file", str(tls / "client-key.pem"))
        version = pushed(
            version_dir(tmp_path, "1", api=upstream_toml("api", service.address)), etcd, *material
        )

        def reported() -> bool:
            shown = meshnode("fleet", "status", "--store", store_url(etcd), "--json", *material)
            return (
                json.loads(shown.stdout)["nodes"].get("node-a", {}).get("policy_version") == version
            )

        wait_until(reported, 10, "the node follows the store over TLS")
        refused = meshnode(
            *("fleet", "status", "--store", store_url(etcd), "--ca-file", str(tls / "ca.pem")),
            check=False,
        )  # no client certificate: etcd refuses the handshake
        assert refused.returncode == 2 and refused.stderr.startswith("fleet status: etcd https://")
    finally:
        etcd.stop()
