"""Discovery backends end to end: traffic follows the registry, and survives its outages."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tests.conftest import write_policies
from tests.support.client import admin, fetch
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
