"""Discovery backends end to end: traffic follows the registry, and survives its outages."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trustme

from tests.conftest import free_port, serve_asgi, write_policies
from tests.support.client import admin, fetch
from tests.support.dnsmasq import DOMAIN, Dnsmasq
from tests.support.etcd import Etcd
from tests.support.fake_consul import FakeConsul, Registration
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
                f'backend = "consul"\nconsul_url = "https://{address}"\nca_file = "ca.pem"\n',
            )
        },
    )
    authority.cert_pem.write_to_path(str(policies / "ca.pem"))
    _, node = await running(policies)
    assert await answered_by(node.outbound[0]) == "one"


async def _has(admin_address: object, address: str) -> bool:
    return address in await endpoint_weights(admin_address)


async def _weights_are(admin_address: object, weights: dict[str, int]) -> bool:
    return await endpoint_weights(admin_address) == weights


async def _fresh(admin_address: object) -> bool:
    return not await _stale(admin_address)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    server = Etcd(tmp_path / "etcd-data")
    server.start()
    yield server
    server.stop()


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
