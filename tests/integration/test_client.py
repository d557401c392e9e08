"""The mesh client in both modes against real HTTP/2 services (Hypercorn) on loopback.

Embedded: the client runs the upstream groups and request path itself. Sidecar:
it talks to a real meshnode (in this test's loop) which does the work. Every
test runs in both modes, on the same policy files, and expects the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode import certs
from meshnode.client import MeshClient, MeshStatusError, MeshUnavailable, open_mesh_client
from meshnode.policy import Address, PolicyError
from tests.conftest import free_port, upstream_toml, write_policies
from tests.support.mtls import TRUST, inbound_section, mesh_upstream, node_toml
from tests.support.user_service import UserService, download_body

FAST_RETRY = """
[retry]
max_retries = 2
initial_delay = "5ms"
max_delay = "20ms"
jitter = 0.0
"""


@pytest.fixture(params=["embedded", "sidecar"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mesh_client(mode: str, running):
    """Open a client named api-gateway on a policy directory, in this test's mode."""

    @asynccontextmanager
    async def opened(directory: Path) -> AsyncIterator[MeshClient]:
        if mode == "embedded":
            async with open_mesh_client("api-gateway", policies=directory) as mesh:
                yield mesh
            return
        _, addresses = await running(directory)
        async with open_mesh_client(
            "api-gateway",
            sidecar=str(addresses.outbound[0]),
            admin=f"http://{addresses.admin[0]}",
        ) as mesh:
            yield mesh

    return opened


async def services(nursery: trio.Nursery, *names: str) -> tuple[list[UserService], list[str]]:
    instances = [UserService(name) for name in names]
    return instances, [await instance.start(nursery) for instance in instances]


async def test_the_seeds_combined_example(tmp_path, nursery, mesh_client, mode) -> None:
    """POST with a client id: the instance is chosen once and kept (session affinity)."""
    instances, addresses = await services(nursery, "a", "b", "c")
    policy = upstream_toml(
        "user-service",
        *addresses,
        extra='[balancer]\nsession_affinity = { header = "x-client-id", ttl = "30m" }\n'
        + '[timeout]\nrequest = "3s"\n'
        + FAST_RETRY,
    )
    directory = write_policies(tmp_path / "policies", {"user-service": policy})
    async with mesh_client(directory) as mesh:
        assert mesh.mode == mode
        created = [
            await mesh.post("user-service", "/api/users", {"name": "John"}, client_id="client-1")
            for _ in range(6)
        ]
        metrics = await mesh.metrics()
    assert {response.status for response in created} == {201}
    assert {response.json()["name"] for response in created} == {"John"}
    assert len({response.json()["instance"] for response in created}) == 1
    served = [instance for instance in instances if instance.requests]
    assert len(served) == 1 and served[0].requests == 6
    seen = served[0].seen[0]
    assert seen["x-client-id"] == "client-1"
    assert seen["content-type"] == "application/json"
    assert (
        seen["user-agent"].startswith("meshnode-client/") and "(api-gateway)" in seen["user-agent"]
    )
    assert metrics["client"] == "api-gateway" and metrics["mode"] == mode
    instance_figures = metrics["load_balancer"]
    assert len(instance_figures) == 3
    assert sorted(figures["total_requests"] for figures in instance_figures.values()) == [0, 0, 6]
    assert metrics["retry"]["total_requests"] == 6
    assert metrics["retry"]["total_attempts"] == 6


async def test_a_killed_instance_is_routed_around(tmp_path, nursery, mesh_client) -> None:
    instances, addresses = await services(nursery, "a", "b", "c")
    directory = write_policies(
        tmp_path / "policies",
        {"user-service": upstream_toml("user-service", *addresses, extra=FAST_RETRY)},
    )
    async with mesh_client(directory) as mesh:
        before = [await mesh.get("user-service", f"/users/{n}") for n in range(6)]
        instances[1].kill()
        await trio.testing.wait_all_tasks_blocked()
        served_before_kill = instances[1].requests
        after = [await mesh.get("user-service", f"/users/{n}") for n in range(12)]
        metrics = await mesh.metrics()
    assert [response.status for response in before + after] == [200] * 18
    assert served_before_kill == 2  # round robin over three
    assert instances[1].requests == served_before_kill
    assert {response.json()["instance"] for response in after} == {"a", "c"}
    killed = metrics["load_balancer"][f"user-service/{addresses[1]}"]
    retry = metrics["retry"]
    assert killed["failures"] >= 1
    # Every try at the dead instance failed, and a retry elsewhere saved its request.
    assert retry["successful_retries"] == retry["retried_requests"] == killed["failures"]
    tries = sum(figures["total_requests"] for figures in metrics["load_balancer"].values())
    assert retry["total_attempts"] == tries == 18 + killed["failures"]


async def test_a_failing_service_opens_its_breaker(tmp_path, nursery, mesh_client) -> None:
    instances, addresses = await services(nursery, "p1", "p2")
    for instance in instances:
        instance.broken = True
    breaker = """
        [circuit_breaker]
        failure_threshold = 3
        volume_threshold = 100
        reset_timeout = "60s"
    """
    directory = write_policies(
        tmp_path / "policies", {"payments": upstream_toml("payments", *addresses, extra=breaker)}
    )
    async with mesh_client(directory) as mesh:
        answers = [await mesh.post("payments", "/charge", {"amount": 5}) for _ in range(5)]
        metrics = await mesh.metrics()
    assert [response.status for response in answers] == [500, 500, 500, 503, 503]
    assert [response.mesh_error for response in answers[3:]] == ["circuit-open"] * 2
    with pytest.raises(MeshStatusError, match="circuit-open"):
        answers[4].raise_for_status()
    assert sum(instance.requests for instance in instances) == 3  # the open breaker called none
    (figures,) = metrics["circuit_breakers"]
    assert figures["name"] == "payments"
    assert figures["metrics"]["current_state"] == "open"
    assert figures["metrics"]["total_requests"] == 3
    assert figures["metrics"]["failed_requests"] == 3
    assert figures["metrics"]["rejected_requests"] == 2
    assert figures["metrics"]["error_rate"] == 1.0


async def test_retries_recover_a_flaky_service(tmp_path, nursery, mesh_client) -> None:
    (flaky,), addresses = await services(nursery, "flaky")
    flaky.fail_next = 2
    directory = write_policies(
        tmp_path / "policies",
        {"inventory": upstream_toml("inventory", *addresses, extra=FAST_RETRY)},
    )
    async with mesh_client(directory) as mesh:
        response = await mesh.get("inventory", "/stock/42")
        metrics = await mesh.metrics()
    assert response.status == 200
    assert flaky.requests == 3
    assert metrics["retry"] == {
        "total_requests": 1,
        "total_attempts": 3,
        "retried_requests": 1,
        "successful_retries": 1,
        "failed_retries": 0,
        "success_rate": 1.0,
        "avg_retry_count": 2.0,
    }


async def test_bodies_stream_both_ways(tmp_path, nursery, mesh_client) -> None:
    _, addresses = await services(nursery, "files")
    directory = write_policies(tmp_path / "policies", {"files": upstream_toml("files", *addresses)})
    size = 8 * 1024 * 1024
    sent = hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        for _ in range(64):
            piece = bytes(range(256)) * 512
            sent.update(piece)
            yield piece

    async with mesh_client(directory) as mesh:
        uploaded = await mesh.post("files", "/upload", content=produce())
        chunks = 0
        received = hashlib.sha256()
        async with mesh.stream(
            "GET", "files", "/download", params={"size": str(size)}, headers={"te": "trailers"}
        ) as response:
            assert response.status == 200
            async for chunk in response.iter_bytes():
                chunks += 1
                received.update(chunk)
    assert uploaded.json() == {"size": 64 * 128 * 1024, "sha256": sent.hexdigest()}
    assert chunks > 1  # delivered as it arrived, not gathered
    assert received.hexdigest() == hashlib.sha256(download_body(size)).hexdigest()
    assert response.trailers is not None
    assert response.trailers["x-checksum"] == received.hexdigest()


async def test_a_cancelled_call_resets_its_stream(tmp_path, nursery, mesh_client) -> None:
    (service,), addresses = await services(nursery, "slow")
    directory = write_policies(
        tmp_path / "policies",
        {"slow": upstream_toml("slow", *addresses, extra='[timeout]\nrequest = "30s"\n')},
    )
    async with mesh_client(directory) as mesh:
        with trio.move_on_after(0.5) as scope:
            await mesh.get("slow", "/slow")
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await service.disconnected.wait()  # the upstream saw the reset
        assert (await mesh.get("slow", "/after")).status == 200


async def test_an_error_of_the_callers_body_reaches_the_caller(
    tmp_path, nursery, mesh_client
) -> None:
    _, addresses = await services(nursery, "files")
    directory = write_policies(tmp_path / "policies", {"files": upstream_toml("files", *addresses)})

    async def broken() -> AsyncIterator[bytes]:
        yield b"first"
        raise KeyError("the caller's own bug")

    async with mesh_client(directory) as mesh:
        with pytest.raises(KeyError, match="own bug"):
            await mesh.post("files", "/upload", content=broken())
        assert (await mesh.get("files", "/still-fine")).status == 200


async def test_an_unknown_service_is_a_no_route_answer(tmp_path, mesh_client) -> None:
    directory = write_policies(tmp_path / "policies", {})
    async with mesh_client(directory) as mesh:
        response = await mesh.get("nowhere", "/")
    assert (response.status, response.mesh_error) == (404, "no-route")


async def test_a_sidecar_that_is_not_there_is_said_so() -> None:
    port = free_port()
    async with open_mesh_client("api-gateway", sidecar=f"127.0.0.1:{port}") as mesh:
        with pytest.raises(MeshUnavailable, match=f"127.0.0.1:{port}"):
            await mesh.get("user-service", "/")


# -- mTLS: the client's identity at a remote node ---------------------------------------


def client_policies(directory: Path, pki: Path, remote: str) -> Path:
    """api-gateway's policies: its certificate, and user-service over mTLS at ``remote``."""
    node_toml(directory, "api-gateway", pki)
    mesh_upstream(directory, "user-service", Address.parse(remote))
    return directory


@pytest.fixture
async def remote_node(tmp_path, nursery, running) -> tuple[UserService, str, Path]:
    """The user-service host: a meshnode whose inbound mTLS listener admits api-gateway."""
    pki = tmp_path / "pki"
    certs.init_ca(pki, TRUST)
    for name in ("user-service", "api-gateway"):
        certs.issue(pki, name)
    (service,), (local,) = await services(nursery, "users")
    remote = tmp_path / "remote"
    node_toml(remote, "user-service", pki, inbound=inbound_section(local, "api-gateway"))
    _, addresses = await running(remote)
    return service, str(addresses.inbound[0]), pki


async def test_a_call_to_an_mtls_node_carries_the_clients_identity(
    tmp_path, remote_node, mesh_client
) -> None:
    service, inbound, pki = remote_node
    directory = client_policies(tmp_path / "client", pki, inbound)
    async with mesh_client(directory) as mesh:
        response = await mesh.post("user-service", "/api/users", {"name": "John"})
    assert response.status == 201
    assert service.seen[0]["x-meshnode-peer-identity"] == f"spiffe://{TRUST}/service/api-gateway"


async def test_a_client_of_another_ca_is_refused(tmp_path, remote_node, mesh_client) -> None:
    service, inbound, _ = remote_node
    other = tmp_path / "other-pki"
    certs.init_ca(other, TRUST)
    certs.issue(other, "api-gateway")
    directory = client_policies(tmp_path / "client", other, inbound)
    async with mesh_client(directory) as mesh:
        response = await mesh.get("user-service", "/")
    assert (response.status, response.mesh_error) == (503, "upstream-connect-failure")
    assert "TLS handshake failed" in json.loads(response.body)["detail"]
    assert service.requests == 0


# -- embedded mode's own policy handling --------------------------------------------------


async def test_a_bad_policy_directory_is_refused_with_every_problem(tmp_path) -> None:
    directory = write_policies(
        tmp_path / "policies",
        {"users": upstream_toml("users", "127.0.0.1:1", extra="[retry]\nmax_retries = 'two'\n")},
    )
    with pytest.raises(PolicyError) as refused:
        async with open_mesh_client("api-gateway", policies=directory):
            pytest.fail("opened on a bad policy directory")
    problem = "retry.max_retries: expected an integer, got 'two'"
    assert refused.value.lines == [f"{directory}/users.toml: {problem}"]


async def test_embedded_policies_reload(tmp_path, nursery) -> None:
    _, addresses = await services(nursery, "orders")
    directory = write_policies(tmp_path / "policies", {})
    async with open_mesh_client("api-gateway", policies=directory, watch=False) as mesh:
        assert (await mesh.get("orders", "/")).mesh_error == "no-route"
        (directory / "orders.toml").write_text(upstream_toml("orders", *addresses))
        result = await mesh.reload()
        assert result.applied and list(result.diff.added) == ["orders"]
        assert (await mesh.get("orders", "/")).json()["instance"] == "orders"


async def test_headers_http2_forbids_are_dropped_and_bad_ones_refused(
    tmp_path, nursery, mesh_client
) -> None:
    (service,), addresses = await services(nursery, "users")
    directory = write_policies(tmp_path / "policies", {"users": upstream_toml("users", *addresses)})
    async with mesh_client(directory) as mesh:
        response = await mesh.get("users", "/", headers={"connection": "close", "x-kept": "1"})
        with pytest.raises(ValueError, match="invalid characters in the value of x-bad"):
            await mesh.get("users", "/", headers={"x-bad": "one\r\nx-injected: two"})
    assert response.status == 200
    assert service.requests == 1
    assert "connection" not in service.seen[0] and service.seen[0]["x-kept"] == "1"
