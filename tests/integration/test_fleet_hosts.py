"""A real multi-host mesh: three hosts as network namespaces on one bridge, a real etcd on
the first, and on each a Hypercorn service and a meshnode whose inbound listener (mTLS)
fronts it. Every node takes its policies from etcd and discovers the service's three
instances there; callers on host 1 reach all three hosts through their nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode import certs
from tests.conftest import NodeProcess, require
from tests.support.commands import meshnode
from tests.support.etcd import Etcd
from tests.support.fleet import fleet_node_toml, push_dir, wait_until
from tests.support.netns import Hosts

pytestmark = pytest.mark.integration

HOSTS = 3
PREFIX = "/meshnode/policies"
TTL = 3


def svc_policy(timeout: str) -> str:
    return textwrap.dedent(f"""
        [upstream]
        name = "svc"
        tls = "mesh"
        [discovery]
        backend = "etcd"
        etcd_url = "http://10.77.0.1:2379"
        prefix = "/meshnode/services/svc/"
        [timeout]
        request = "{timeout}"
        [retry]
        retry_on = ["connect-failure", "refused-stream", "reset", "503"]
        """)


class Mesh:
    """The hosts, etcd, and per host a service and a node (``nodes[n]``, n from 1)."""

    def __init__(self, tmp_path: Path, hosts: Hosts) -> None:
        self.tmp_path = tmp_path
        self.hosts = hosts
        self.url = f"etcd://{hosts.address(1)}:2379{PREFIX}"
        self.etcd = Etcd(
            tmp_path / "etcd-data", host=hosts.address(1), wrapper=hosts.command(1, [])
        )
        self.etcd.start()
        pki = tmp_path / "pki"
        certs.init_ca(pki, "mesh.local")
        certs.issue(pki, "svc")  # one service, one identity, whichever host serves it
        self.pki = pki
        self.nodes: dict[int, NodeProcess] = {}
        for number in range(1, HOSTS + 1):
            self._start_service(number)
            address = f"{hosts.address(number)}:15443"
            self.etcd.put(f"/meshnode/services/svc/host-{number}", {"address": address})
            self.nodes[number] = self.start_node(number)

    def _start_service(self, number: int) -> None:
        module = "tests.support.recycling_upstream"
        args = [sys.executable, "-m", module, "--port", "8080", "--max-requests", "100000"]
        service = self.hosts.start(number, args, stdout=subprocess.PIPE)
        assert service.stdout is not None
        assert service.stdout.readline().startswith("listening")

    def start_node(self, number: int) -> NodeProcess:
        directory = self.tmp_path / f"host-{number}"
        if not directory.exists():
            directory.mkdir()
            sections = textwrap.dedent(f"""
                [listeners.outbound]
                address = "127.0.0.1:15001"
                [listeners.inbound]
                address = "{self.hosts.address(number)}:15443"
                local = "127.0.0.1:8080"
                allow = ["spiffe://mesh.local/service/svc"]
                [admin]
                address = "127.0.0.1:15000"
                [tls]
                ca = "{self.pki}/ca.pem"
                cert = "{self.pki}/svc.pem"
                key = "{self.pki}/svc-key.pem"
                """)
            node_toml = fleet_node_toml(f"host-{number}", self.url, TTL, sections=sections)
            (directory / "node.toml").write_text(node_toml)
        node = NodeProcess(directory, wrapper=self.hosts.command(number, []))
        self.nodes[number] = node
        return node

    def meshnode(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI, run on host 1 (the store's address is only reachable there)."""
        return meshnode(*args, check=check, wrapper=self.hosts.command(1, []))

    def push(self, label: str, *options: str, **files: str) -> str:
        directory = self.push_dir(label, **files)
        result = self.meshnode("policy", "push", str(directory), "--to", self.url, *options)
        return result.stdout.strip().splitlines()[-1].split()[1]

    def push_dir(self, label: str, **files: str) -> Path:
        """What an operator pushes, validated against a node.toml like the nodes' (host 1's)."""
        return push_dir(
            self.tmp_path, label, (self.tmp_path / "host-1" / "node.toml").read_text(), **files
        )

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.meshnode("fleet", "status", "--store", self.url, "--json").stdout
        )
        return found

    def versions(self) -> dict[str, str | None]:
        return {name: e.get("policy_version") for name, e in self.status()["nodes"].items()}

    def load(self, requests: int) -> subprocess.Popen[str]:
        """h2load on host 1 through its node to the service (on every host)."""
        args = [require("h2load"), "-n", str(requests), "-c", "4", "-m", "4"]
        args += ["-H", ":authority: svc", "http://127.0.0.1:15001/"]
        return self.hosts.start(1, args, stdout=subprocess.PIPE)

    def served_by(self, number: int) -> int:
        counts = self.hosts.run_on(
            number,
            [require("curl"), "-s", "--http2-prior-knowledge", "http://127.0.0.1:8080/_counts"],
        )
        return int(json.loads(counts).get("GET", 0))


def finished(load: subprocess.Popen[str], requests: int) -> None:
    output, _ = load.communicate(timeout=120)
    assert f"{requests} succeeded, 0 failed, 0 errored, 0 timeout" in output, output


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    require("ip")
    if os.geteuid() != 0:  # as require() does for a missing tool: said, never skipped
        pytest.fail("network namespaces need root: run the tests as root, as CI does")
    hosts = Hosts(HOSTS)
    try:
        built = Mesh(tmp_path, hosts)
        yield built
    finally:
        hosts.close()


def test_a_fleet_of_three_hosts_on_etcd(mesh: Mesh) -> None:
    everyone = {f"host-{number}" for number in range(1, HOSTS + 1)}

    # A first version everywhere; a caller on host 1 reaches the service on all three.
    first = mesh.push("1", svc=svc_policy("10s"))
    wait_until(lambda: mesh.versions() == dict.fromkeys(everyone, first), 15, "v1 everywhere")
    finished(mesh.load(600), 600)
    assert all(mesh.served_by(number) > 0 for number in range(1, HOSTS + 1))

    # A change reaches every host within 2 s, while requests flow and none fails.
    load = mesh.load(3000)
    second = mesh.push("2", svc=svc_policy("9s"))
    took = wait_until(lambda: mesh.versions() == dict.fromkeys(everyone, second), 5, "v2")
    finished(load, 3000)
    assert took < 2, f"v2 took {took:.2f}s to reach every host"

    # A bad policy is refused by push; written straight into the store, by every node.
    bad = mesh.push_dir("bad", svc='[upstream]\nname = "svc"\n')
    refused = mesh.meshnode("policy", "push", str(bad), "--to", mesh.url, check=False)
    assert refused.returncode == 1 and "discovery: required key is missing" in refused.stderr
    mesh.etcd.put(f"{PREFIX}/versions/bad/svc.toml", "[upstream]\nname = 1\n")
    mesh.etcd.put(f"{PREFIX}/current", "bad")
    wait_until(
        lambda: all(
            (e.get("rejected") or {}).get("version") == "bad"
            for e in mesh.status()["nodes"].values()
        ),
        10,
        "every node refuses the bad version",
    )
    assert mesh.versions() == dict.fromkeys(everyone, second)

    # etcd dies: the hosts serve on; it returns: they catch up with what was pushed since.
    mesh.etcd.stop()
    finished(mesh.load(500), 500)
    mesh.etcd.start()
    third = mesh.push("3", svc=svc_policy("8s"))
    wait_until(lambda: mesh.versions() == dict.fromkeys(everyone, third), 15, "caught up")

    # A canary that refuses stops the rollout: host 2 defines "extra" itself.
    (mesh.tmp_path / "host-2" / "extra.toml").write_text(
        '[upstream]\nname = "extra"\ntls = "none"\n[discovery]\nendpoints = ["127.0.0.1:8080"]\n'
    )
    mesh.nodes[2].process.send_signal(signal.SIGHUP)  # the local file is loaded
    mesh.nodes[2].wait_for_log("added ['extra']")
    clash = '[upstream]\nname = "extra"\ntls = "none"\n[discovery]\nendpoints = ["127.0.0.1:9"]\n'
    stopped = mesh.meshnode(
        *("policy", "push", str(mesh.push_dir("4", svc=svc_policy("7s"), extra=clash))),
        *("--to", mesh.url, "--canary", "host-2", "--wait", "20s"),
        check=False,
    )
    assert stopped.returncode == 2 and "canary host-2 refused version" in stopped.stderr
    assert mesh.status()["current"] == third
    assert mesh.versions() == dict.fromkeys(everyone, third)

    # A node that dies leaves the registry once its lease runs out.
    mesh.nodes[3].process.send_signal(signal.SIGKILL)
    wait_until(lambda: set(mesh.versions()) == everyone - {"host-3"}, TTL + 8, "host-3 gone")
