"""Discovery backends end to end: traffic follows the registry, and survives its outages."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import free_port, write_policies
from tests.support.client import admin, fetch
from tests.support.dnsmasq import DOMAIN, Dnsmasq
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
