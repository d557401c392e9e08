"""``meshnode serve --workers 2``: both workers serve, the parent restarts a dead one,
fans reloads out, sums metrics, talks to systemd, and drains them all."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import NodeProcess, answering, require, upstream_toml, write_policies
from tests.integration.test_systemd import receive
from tests.support.client import metrics

AUTHORITY = ("-H", ":authority: api")
PARENT_READY = r"meshnode ready: outbound=(\S+) admin=(\S+) inbound=\S+ workers=2"


async def workers(admin: str) -> list[dict]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{admin}/admin/workers")).json()["workers"]


async def eventually_two_ready(admin: str, within: float = 15) -> list[dict]:
    with trio.fail_after(within):
        while True:
            listed = await workers(admin)
            if all(worker["ready"] for worker in listed):
                return listed
            await trio.sleep(0.1)


async def test_two_workers(tmp_path: Path, nursery: trio.Nursery, node_process) -> None:
    upstream = await answering(nursery, b"ok")
    policies = write_policies(tmp_path / "p", {"api": upstream_toml("api", upstream)})
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        os.environ["NOTIFY_SOCKET"] = str(notify)
        try:
            node: NodeProcess = node_process(policies, "--workers", "2", ready=PARENT_READY)
        finally:
            del os.environ["NOTIFY_SOCKET"]
        told = receive(sock, "READY=1")
        assert "STATUS=serving with 2 of 2 workers ready" in told
        with pytest.raises(AssertionError):  # the workers never talk to systemd
            receive(sock, "READY=1", seconds=0.5)

    listed = await eventually_two_ready(node.admin)
    assert len({worker["pid"] for worker in listed}) == 2

    result = await trio.run_process(
        [
            require("h2load"),
            *AUTHORITY,
            "-n",
            "4000",
            "-c",
            "16",
            "-m",
            "4",
            f"http://{node.outbound}/",
        ],
        capture_stdout=True,
        env={**os.environ},
    )
    assert "4000 succeeded, 0 failed" in result.stdout.decode()
    async with httpx.AsyncClient() as client:
        report = (await client.get(f"http://{node.admin}/admin/upstreams")).json()
    per_worker = [
        sum(upstreams["api"]["requests"].values()) for upstreams in report["workers"].values()
    ]
    assert len(per_worker) == 2 and all(served > 0 for served in per_worker)  # both served
    assert sum(report["upstreams"]["api"]["requests"].values()) == 4000
    assert 'meshnode_requests_total{code="200",upstream="api"} 4000.0' in await metrics(node.admin)

    (policies / "web.toml").write_text(upstream_toml("web", upstream))
    async with httpx.AsyncClient(headers={"x-meshnode-admin": "1"}) as client:
        reloaded = (await client.post(f"http://{node.admin}/admin/reload")).json()
    assert reloaded["applied"] is True  # every worker applied it
    assert [answer["changes"]["added"] for answer in reloaded["workers"].values()] == [["web"]] * 2

    victim = listed[0]
    os.kill(victim["pid"], signal.SIGKILL)
    with trio.fail_after(15):
        while True:
            again = await workers(node.admin)
            if again[0]["ready"] and again[0]["pid"] != victim["pid"]:
                break
            await trio.sleep(0.1)
    assert again[0]["restarts"] == 1
    assert "meshnode_worker_restarts_total 1.0" in await metrics(node.admin)
    result = await trio.run_process(
        [require("h2load"), *AUTHORITY, "-n", "400", "-c", "8", f"http://{node.outbound}/"],
        capture_stdout=True,
    )
    assert "400 succeeded, 0 failed" in result.stdout.decode()

    node.process.send_signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(node.process.wait, 30) == 0
    assert "every worker has drained" in node.rest_of_log()
