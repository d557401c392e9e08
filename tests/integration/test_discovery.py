"""Discovery backends end to end: traffic follows the registry, and survives its outages."""

from __future__ import annotations

import base64
import json
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trustme
import yaml

from meshnode.discovery.service import ServiceChange, ServiceDiscovery
from tests.conftest import free_port, serve_asgi, write_policies
from tests.support.client import admin, fetch
from tests.support.dnsmasq import DOMAIN, Dnsmasq
from tests.support.etcd import Etcd
from tests.support.fake_consul import FakeConsul, Registration
from tests.support.fake_kubernetes import FakeKubernetes, endpoint_slice
from tests.support.tunable import TunableUpstream


def discovered_toml(name: str, discovery: str) -> str:
    return textwrap.dedent(f"""
        [upstream]
        name = "{name}"
        tls = "none"

        [discovery]
    """) + textwrap.dedent(discovery)


async def start_upstreams(nursery: trio.Nursery, *names: str) -> dict[str, str]:
    """Tunable upstreams that answer with their own name; name -> address."""
    return {name: await nursery.start(TunableUpstream(name).serve) for name in names}


async def answered_by(address: object, authority: str = "api") -> str:
    status, _, body = await fetch(address, authority)
    return body.decode() if status == 200 else f"status {status}"


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it holds (registries change on their own schedule)."""
    with trio.fail_after(within):
        while not await check():
            await trio.sleep(0.1)


async def serves(address: object, name: str) -> None:
    async def check() -> bool:
        return await answered_by(address) == name

    await eventually(check)


async def upstream_report(admin_address: object) -> dict:
    _, report = await admin(admin_address, "GET", "/admin/upstreams")
    return report["upstreams"]["api"]


async def readiness_check(admin_address: object, name: str) -> dict:
    _, report = await admin(admin_address, "GET", "/health/ready")
    return next(check for check in report["checks"] if check["name"] == name)


async def test_file_discovery_follows_the_file_and_survives_garbage(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    upstreams = await start_upstreams(nursery, "one", "two")
    endpoints = tmp_path / "policies" / "api-endpoints.json"
    policies = write_policies(
        tmp_path / "policies",
        {"api": discovered_toml("api", 'backend = "file"\npath = "api-endpoints.json"\n')},
    )
    endpoints.write_text(json.dumps([upstreams["one"]]))
    _, node = await running(policies)  # the node's addresses
    assert await answered_by(node.outbound[0]) == "one"

    endpoints.write_text(json.dumps([{"address": upstreams["two"], "weight": 2}]))
    await serves(node.outbound[0], "two")

    endpoints.write_text("{not json")
    await eventually(lambda: _stale(node.admin[0]))
    assert await answered_by(node.outbound[0]) == "two"  # the last good set still serves
    check = await readiness_check(node.admin[0], "discovery:api")
    assert check["status"] == "unhealthy" and not check["critical"]
    assert (await admin(node.admin[0], "GET", "/health/ready"))[0] == 200

    endpoints.write_text(
        json.dumps(["no-port", {"address": "127.0.0.1:99999"}, upstreams["one"], 7])
    )
    await serves(node.outbound[0], "one")  # the three bad entries skipped
    assert not await _stale(node.admin[0])


async def _stale(admin_address: object) -> bool:
    return bool((await upstream_report(admin_address))["discovery"]["stale"])


@pytest.fixture
def dnsmasq() -> Iterator[Dnsmasq]:
    server = Dnsmasq()
    yield server
    server.stop()


async def test_dns_srv_records_with_priority_and_weight(
    tmp_path: Path, nursery: trio.Nursery, running, dnsmasq: Dnsmasq
) -> None:
    upstreams = await start_upstreams(nursery, "one", "two", "backup")
    port = {name: address.rsplit(":", 1)[1] for name, address in upstreams.items()}
    name = f"_h2._tcp.api.{DOMAIN}"
    hosts = tuple(f"{host}.{DOMAIN},127.0.0.1" for host in upstreams)
    dnsmasq.serve(
        srv=(
            f"{name},one.{DOMAIN},{port['one']},0,10",
            f"{name},two.{DOMAIN},{port['two']},0,30",
            f"{name},backup.{DOMAIN},{port['backup']},10,10",  # a lower priority: unused
        ),
        hosts=hosts,
    )
    discovery = f"""
        backend = "dns"
        name = "{name}"
        resolver = "{dnsmasq.address}"
        refresh_interval = "1s"
        min_ttl = "100ms"
    """
    policies = write_policies(tmp_path, {"api": discovered_toml("api", discovery)})
    _, node = await running(policies)
    report = await upstream_report(node.admin[0])
    weights = {endpoint["address"]: endpoint["weight"] for endpoint in report["endpoints"]}
    assert weights == {upstreams["one"]: 10, upstreams["two"]: 30}
    seen = {await answered_by(node.outbound[0]) for _ in range(8)}
    assert seen == {"one", "two"}

    dnsmasq.serve(srv=(f"{name},backup.{DOMAIN},{port['backup']},0,10",), hosts=hosts)
    await serves(node.outbound[0], "backup")

    dnsmasq.stop()  # the registry goes away: the last endpoints keep serving
    await eventually(lambda: _stale(node.admin[0]))
    assert await answered_by(node.outbound[0]) == "backup"


async def test_dns_address_records_with_a_port(
    tmp_path: Path, nursery: trio.Nursery, running, dnsmasq: Dnsmasq
) -> None:
    port = free_port()
    for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
        await nursery.start(TunableUpstream(name, host, port).serve)
    dnsmasq.serve(hosts=(f"api.{DOMAIN},127.0.0.2",))
    discovery = f"""
        backend = "dns"
        name = "api.{DOMAIN}"
        port = {port}
        resolver = "{dnsmasq.address}"
        refresh_interval = "1s"
        min_ttl = "100ms"
    """
    policies = write_policies(tmp_path, {"api": discovered_toml("api", discovery)})
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "a"
    dnsmasq.serve(hosts=(f"api.{DOMAIN},127.0.0.3",))
    await serves(node.outbound[0], "b")


def consul_toml(url: str, extra: str = "") -> str:
    return discovered_toml(
        "api",
        f"""
        backend = "consul"
        consul_url = "{url}"
        service = "api"
        tag = "v1"
        token_file = "consul-token"
        """
        + extra,
    )


def registration(name: str, address: str, **fields: object) -> Registration:
    host, port = address.rsplit(":", 1)
    return Registration("api", name, host, int(port), tags=["v1"], **fields)  # type: ignore[arg-type]


async def endpoint_weights(admin_address: object) -> dict[str, int]:
    report = await upstream_report(admin_address)
    return {endpoint["address"]: endpoint["weight"] for endpoint in report["endpoints"]}


async def test_consul_blocking_queries_follow_the_registry(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    upstreams = await start_upstreams(nursery, "one", "two")
    consul = FakeConsul(token="s3cret")
    consul.register(registration("one", upstreams["one"], weight=2))
    consul.register(registration("two", upstreams["two"], status="critical"))
    consul.register(Registration("api", "v2", "127.0.0.1", 1, tags=["v2"]))  # another tag
    url = "http://" + await serve_asgi(nursery, consul)
    policies = write_policies(tmp_path, {"api": consul_toml(url)})
    (policies / "consul-token").write_text("s3cret\n")
    _, node = await running(policies)
    assert await endpoint_weights(node.admin[0]) == {upstreams["one"]: 2}
    assert await answered_by(node.outbound[0]) == "one"
    assert consul.queries[0] == {"passing": "true", "tag": "v1"}  # the first: no index

    consul.update("two", status="passing")
    await eventually(lambda: _has(node.admin[0], upstreams["two"]))
    consul.deregister("one")
    await serves(node.outbound[0], "two")
    consul.update("two", weight=7)
    await eventually(lambda: _weights_are(node.admin[0], {upstreams["two"]: 7}))
    blocking = [query for query in consul.queries if "index" in query]
    assert blocking and all(query["wait"] == "300s" for query in blocking)

    async def waiting_on_the_latest_index() -> bool:
        return consul.queries[-1].get("index") == str(consul.service_index["api"])

    await eventually(waiting_on_the_latest_index)
    settled = len(consul.queries)
    await trio.sleep(2)
    assert len(consul.queries) == settled  # blocked in a query, not polling


async def test_consul_outages_and_refusals_keep_the_last_endpoints(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    upstreams = await start_upstreams(nursery, "one", "two")
    consul = FakeConsul(token="s3cret")
    consul.register(registration("one", upstreams["one"]))
    url = "http://" + await serve_asgi(nursery, consul)
    policies = write_policies(tmp_path, {"api": consul_toml(url, 'wait = "1s"\n')})
    (policies / "consul-token").write_text("s3cret")
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "one"

    consul.failure = (500, b"rpc error making call: No cluster leader")
    await eventually(lambda: _stale(node.admin[0]))
    report = await upstream_report(node.admin[0])
    assert "No cluster leader" in report["discovery"]["last_error"]
    assert await answered_by(node.outbound[0]) == "one"
    consul.failure = None
    await eventually(lambda: _fresh(node.admin[0]))

    # The index goes back (a snapshot restore): once the blocking query returns with the
    # lower index, the client starts again from 0 and sees the change.
    before = len(consul.queries)
    consul.restore_snapshot(3)
    consul.register(registration("two", upstreams["two"]))
    await eventually(lambda: _has(node.admin[0], upstreams["two"]))
    assert any("index" not in query for query in consul.queries[before:])
    consul.deregister("two")
    await eventually(lambda: _weights_are(node.admin[0], {upstreams["one"]: 1}))

    (policies / "consul-token").write_text("rotated-but-wrong")  # read before each query
    await eventually(lambda: _stale(node.admin[0]))
    assert "403: ACL not found" in (await upstream_report(node.admin[0]))["discovery"]["last_error"]
    assert await answered_by(node.outbound[0]) == "one"


async def test_a_consul_that_answers_at_once_is_not_asked_in_a_tight_loop(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    upstreams = await start_upstreams(nursery, "one")
    consul = FakeConsul(token="s3cret")
    consul.register(registration("one", upstreams["one"]))
    url = "http://" + await serve_asgi(nursery, consul)
    policies = write_policies(tmp_path, {"api": consul_toml(url)})
    (policies / "consul-token").write_text("s3cret")
    await running(policies)
    consul.churn = True
    before = len(consul.queries)
    await trio.sleep(3)
    assert 2 <= len(consul.queries) - before <= 4  # one a second, not thousands


async def test_consul_over_tls_with_a_private_ca(
    tmp_path: Path, nursery: trio.Nursery, running
) -> None:
    upstreams = await start_upstreams(nursery, "one")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "consul.pem"))
    consul = FakeConsul()
    consul.register(registration("one", upstreams["one"]))
    address = await serve_asgi(
        nursery,
        consul,
        certfile=str(tmp_path / "consul.pem"),
        keyfile=str(tmp_path / "consul.pem"),
    )
    policies = write_policies(
        tmp_path / "policies",
        {
            "api": discovered_toml(
                "api",
                f'backend = "consul"\nconsul_url = "https://{address}"\nca_file = "ca.pem"\n'
                'datacenter = "dc1"\n',
            )
        },
    )
    authority.cert_pem.write_to_path(str(policies / "ca.pem"))
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "one"
    assert consul.queries[0]["dc"] == "dc1"


async def _has(admin_address: object, address: str) -> bool:
    return address in await endpoint_weights(admin_address)


async def _weights_are(admin_address: object, weights: dict[str, int]) -> bool:
    return await endpoint_weights(admin_address) == weights


async def _fresh(admin_address: object) -> bool:
    return not await _stale(admin_address)


async def test_etcd_watch_follows_the_keys_and_survives_an_outage(
    tmp_path: Path, nursery: trio.Nursery, running, etcd: Etcd
) -> None:
    upstreams = await start_upstreams(nursery, "one", "two")
    prefix = "/meshnode/services/api/"
    etcd.put(prefix + "one", {"address": upstreams["one"], "weight": 2, "metadata": {"v": "1"}})
    etcd.put(prefix + "broken", "{not json")
    etcd.put(prefix + "no-address", {"weight": 1})
    etcd.put("/meshnode/services/apiary/x", {"address": "127.0.0.1:1"})  # not under the prefix
    policies = write_policies(
        tmp_path / "policies",
        {"api": discovered_toml("api", f'backend = "etcd"\netcd_url = "{etcd.url}"\n')},
    )
    _, node = await running(policies)
    assert await endpoint_weights(node.admin[0]) == {upstreams["one"]: 2}

    etcd.put(prefix + "two", {"address": upstreams["two"]})
    await eventually(lambda: _has(node.admin[0], upstreams["two"]))
    etcd.delete(prefix + "one")
    await serves(node.outbound[0], "two")
    etcd.put(prefix + "two", {"address": upstreams["two"], "weight": 5})
    await eventually(lambda: _weights_are(node.admin[0], {upstreams["two"]: 5}))

    etcd.stop()
    await eventually(lambda: _stale(node.admin[0]))
    assert await answered_by(node.outbound[0]) == "two"
    etcd.start()
    etcd.put(prefix + "one", {"address": upstreams["one"]})
    await eventually(lambda: _has(node.admin[0], upstreams["one"]), within=40)
    assert not await _stale(node.admin[0])


@pytest.fixture
async def kubernetes(tmp_path: Path, nursery: trio.Nursery) -> tuple[FakeKubernetes, str, Path]:
    """The fake API server over TLS; its address and a service-account directory for it."""
    authority = trustme.CA()
    server_pem = tmp_path / "apiserver.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    cluster = FakeKubernetes(tokens={"token-1"})
    address = await serve_asgi(nursery, cluster, certfile=str(server_pem), keyfile=str(server_pem))
    account = tmp_path / "serviceaccount"
    account.mkdir()
    authority.cert_pem.write_to_path(str(account / "ca.crt"))
    (account / "token").write_text("token-1")
    return cluster, address, account


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def test_kubernetes_in_cluster_list_watch_bookmarks_and_410(
    tmp_path: Path, nursery: trio.Nursery, running, kubernetes, monkeypatch
) -> None:
    cluster, address, account = kubernetes
    host, port = address.rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    upstreams = await start_upstreams(nursery, "one", "two")
    cluster.apply("prod", endpoint_slice("api-a", "api", port_of(upstreams["one"]), ["127.0.0.1"]))
    cluster.apply("prod", endpoint_slice("other", "web", 1, ["127.0.0.1"]))  # another service
    discovery = f"""
        backend = "kubernetes"
        namespace = "prod"
        port = "http"
        service_account_dir = "{account}"
    """
    policies = write_policies(tmp_path / "policies", {"api": discovered_toml("api", discovery)})
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "one"

    two = endpoint_slice("api-b", "api", port_of(upstreams["two"]), ["127.0.0.1"])
    cluster.apply("prod", two)
    await eventually(lambda: _has(node.admin[0], upstreams["two"]))
    not_ready = endpoint_slice(
        "api-a", "api", port_of(upstreams["one"]), ["127.0.0.1"], ready=False
    )
    cluster.apply("prod", not_ready)  # only ready endpoints take traffic
    await eventually(lambda: _weights_are(node.admin[0], {upstreams["two"]: 1}))

    cluster.bookmark()  # an idle watch still moves its version on
    await trio.sleep(0.2)
    cluster.end_watches()
    await eventually(lambda: _watched_from(cluster, cluster.version))

    cluster.compact()  # the version the client holds is gone: 410, then a new list
    cluster.end_watches()
    lists_before = _lists(cluster)
    await eventually(lambda: _listed_again(cluster, lists_before))
    cluster.delete("prod", "api-a")
    cluster.apply("prod", endpoint_slice("api-a", "api", port_of(upstreams["one"]), ["127.0.0.1"]))
    await eventually(lambda: _has(node.admin[0], upstreams["one"]))

    (account / "token").write_text("token-2")  # the kubelet rotates the token
    cluster.tokens = {"token-2"}
    cluster.end_watches()
    cluster.delete("prod", "api-b")
    await eventually(lambda: _weights_are(node.admin[0], {upstreams["one"]: 1}))
    assert not await _stale(node.admin[0])


async def test_kubernetes_with_a_kubeconfig_and_a_port_number(
    tmp_path: Path, nursery: trio.Nursery, running, kubernetes
) -> None:
    cluster, address, account = kubernetes
    upstreams = await start_upstreams(nursery, "one")
    cluster.apply(
        "default",
        endpoint_slice("api-a", "api", port_of(upstreams["one"]), ["127.0.0.1"], ready=None),
    )
    policies = tmp_path / "policies"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": f"https://{address}",
                    "certificate-authority-data": base64.b64encode(
                        (account / "ca.crt").read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": "token-1"}}],
    }
    discovery = f"""
        backend = "kubernetes"
        port = {port_of(upstreams["one"])}
        kubeconfig = "kubeconfig.yaml"
    """
    write_policies(policies, {"api": discovered_toml("api", discovery)})
    (policies / "kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "one"


def _lists(cluster: FakeKubernetes) -> int:
    return sum(1 for request in cluster.requests if "watch" not in request)


async def _listed_again(cluster: FakeKubernetes, before: int) -> bool:
    return _lists(cluster) > before


async def _watched_from(cluster: FakeKubernetes, version: int) -> bool:
    watches = [request for request in cluster.requests if "watch" in request]
    return bool(watches) and watches[-1]["resourceVersion"] == str(version)


async def test_the_library_discovers_from_consul_as_in_the_seed(nursery: trio.Nursery) -> None:
    consul = FakeConsul()
    consul.register(Registration("api-service", "a", "10.0.0.5", 8080))
    url = "http://" + await serve_asgi(nursery, consul)
    async with ServiceDiscovery(
        backend="consul", consul_url=url, refresh_interval=15.0
    ) as discovery:
        changes: list[ServiceChange] = []

        async def changed(change: ServiceChange) -> None:  # a coroutine function, awaited
            await trio.sleep(0)
            changes.append(change)

        discovery.on("service-changed", changed)
        instances = await discovery.discover_service("api-service")
        assert [instance.address for instance in instances] == ["10.0.0.5:8080"]
        consul.register(Registration("api-service", "b", "10.0.0.6", 8080, weight=3))

        async def changed_twice() -> bool:
            return len(changes) == 2

        await eventually(changed_twice)
        assert [(i.address, i.weight) for i in changes[1].instances] == [
            ("10.0.0.5:8080", 1),
            ("10.0.0.6:8080", 3),
        ]
        assert changes[1].previous == changes[0].instances
        assert len(await discovery.discover_service("api-service")) == 2


def test_the_library_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="wait='soon': write a duration like"):
        ServiceDiscovery(backend="consul", wait="soon")
    with pytest.raises(ValueError, match="unknown backend"):
        ServiceDiscovery(backend="zookeeper")
