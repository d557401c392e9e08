"""The queue fallback: accepted now, delivered later, in order, once per key, across a crash."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import trio

from tests.conftest import NodeProcess, upstream_toml, write_policies
from tests.support.client import admin, fetch
from tests.support.commands import meshnode
from tests.support.tunable import TunableUpstream

QUEUE = """
[fallback]
kind = "queue"
on = ["circuit-open", "retries-exhausted"]
max_depth = 3
max_attempts = 3
"""


def queued_policy(address: str, extra: str = QUEUE) -> dict[str, str]:
    return {"pay": upstream_toml("pay", address, extra=extra)}


def with_state_dir(directory: Path, state: Path) -> Path:
    node = directory / "node.toml"
    node.write_text(node.read_text().replace("[node]\n", f'[node]\nstate_dir = "{state}"\n'))
    return directory


async def post(address, body: str, *headers: str) -> tuple[int, dict, bytes]:
    return await fetch(address, "pay", "/charge", "-d", body, *headers)


async def test_queued_while_open_then_delivered_in_order_once(tmp_path, nursery, running) -> None:
    upstream = TunableUpstream("pay")
    address = await nursery.start(upstream.serve)
    directory = with_state_dir(
        write_policies(tmp_path / "p", queued_policy(address)), tmp_path / "state"
    )
    node, addresses = await running(directory)
    with node.bus.subscribe() as events:
        await admin(addresses.admin[0], "POST", "/admin/breakers/pay?state=open")
        answers = []
        for n in range(3):
            key = ("-H", "idempotency-key: k-0", "-H", "authorization: Bearer s") if n == 0 else ()
            status, headers, body = await post(addresses.outbound[0], f'{{"n":{n}}}', *key)
            answers.append((status, headers["x-meshnode-fallback"], json.loads(body)))
        assert [a[0] for a in answers] == [202, 202, 202]
        assert answers[0][2]["idempotency_key"] == "k-0"
        assert answers[1][2] == {
            "status": "queued",
            "id": answers[1][2]["id"],
            "idempotency_key": f"meshnode-queue-{answers[1][2]['id']}",
        }
        status, headers, _ = await post(addresses.outbound[0], '{"n":3}')
        assert (status, headers["x-meshnode-error"]) == (503, "circuit-open")  # queue full
        assert upstream.requests == 0
        _, report = await admin(addresses.admin[0], "GET", "/admin/queue/pay")
        assert (report["depth"], [e["path"] for e in report["entries"]]) == (3, ["/charge"] * 3)
        first_id = answers[0][2]["id"]
        status, entry = await admin(addresses.admin[0], "GET", f"/admin/queue/pay/{first_id}")
        assert (status, entry["state"], entry["body_preview"]) == (200, "queued", '{"n":0}')
        assert ["authorization", "(redacted)"] in entry["headers"]
        assert (await admin(addresses.admin[0], "GET", "/admin/queue/pay/999"))[0] == 404
        await admin(addresses.admin[0], "POST", "/admin/breakers/pay?state=auto")
        with trio.fail_after(15):
            kinds = []
            while "queue-drained" not in kinds:
                kinds.append((await events.receive()).type)
    assert "queue-filling" in kinds
    assert upstream.received == [
        ("k-0", b'{"n":0}'),
        (answers[1][2]["idempotency_key"], b'{"n":1}'),
        (answers[2][2]["idempotency_key"], b'{"n":2}'),
    ]
    _, report = await admin(addresses.admin[0], "GET", "/admin/queue/pay")
    assert report["depth"] == 0
    metrics = (
        await trio.run_process(
            ["curl", "-s", f"http://{addresses.admin[0]}/metrics"], capture_stdout=True
        )
    ).stdout.decode()
    assert 'meshnode_queue_total{outcome="delivered",upstream="pay"} 3.0' in metrics


async def test_dead_letters_after_max_attempts_and_on_4xx(tmp_path, nursery, running) -> None:
    upstream = TunableUpstream("pay")
    upstream.status = 503
    address = await nursery.start(upstream.serve)
    directory = with_state_dir(
        write_policies(tmp_path / "p", queued_policy(address)), tmp_path / "state"
    )
    _, addresses = await running(directory)
    await admin(addresses.admin[0], "POST", "/admin/breakers/pay?state=open")
    await post(addresses.outbound[0], "one")
    await admin(addresses.admin[0], "POST", "/admin/breakers/pay?state=auto")
    with trio.fail_after(20):
        while (await admin(addresses.admin[0], "GET", "/admin/queue/pay"))[1][
            "dead_letter_count"
        ] < 1:
            await trio.sleep(0.2)
    assert upstream.requests == 3  # max_attempts
    _, report = await admin(addresses.admin[0], "GET", "/admin/queue/pay")
    assert report["dead_letters"][0]["last_error"] == "status 503"
    assert report["dead_letter_count"] == 1
    upstream.status = 400
    assert (await admin(addresses.admin[0], "POST", "/admin/queue/pay/retry"))[1]["requeued"] == 1
    with trio.fail_after(20):
        while (await admin(addresses.admin[0], "GET", "/admin/queue/pay"))[1][
            "dead_letter_count"
        ] < 1:
            await trio.sleep(0.2)
    assert upstream.requests == 4  # a 400 dead-letters at once
    assert (await admin(addresses.admin[0], "DELETE", "/admin/queue/pay"))[1]["purged"] == 1


async def test_a_request_queued_before_a_crash_is_delivered_after_restart(
    tmp_path, nursery, node_process
) -> None:
    upstream = TunableUpstream("pay")
    address = await nursery.start(upstream.serve)
    directory = tmp_path / "p"
    state = tmp_path / "state"
    write_policies(directory, queued_policy(address))
    with_state_dir(directory, state)
    node: NodeProcess = await trio.to_thread.run_sync(node_process, directory)
    await admin(node.admin, "POST", "/admin/breakers/pay?state=open")
    status, _, body = await post(node.outbound, "precious")
    assert (status, json.loads(body)["status"]) == (202, "queued")
    os.kill(node.process.pid, signal.SIGKILL)  # right after the 202: nothing else flushed
    await trio.to_thread.run_sync(node.process.wait, 10)
    assert upstream.requests == 0
    restarted: NodeProcess = await trio.to_thread.run_sync(node_process, directory)
    with trio.fail_after(15):
        while not upstream.received:
            await trio.sleep(0.1)
    assert [body for _, body in upstream.received] == [b"precious"]
    listing = await trio.to_thread.run_sync(
        lambda: meshnode("queue", "list", "pay", "--admin", f"http://{restarted.admin}")
    )
    assert listing.stdout.startswith("0 queued (0 bytes"), listing.stdout


async def test_a_corrupt_queue_database_fails_readiness_not_the_node(
    tmp_path, nursery, running
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "queue.db").write_bytes(b"garbage" * 1000)
    upstream = TunableUpstream("pay")
    address = await nursery.start(upstream.serve)
    directory = with_state_dir(write_policies(tmp_path / "p", queued_policy(address)), state)
    _, addresses = await running(directory)
    status, health = await admin(addresses.admin[0], "GET", "/health/ready")
    assert status == 503
    check = next(c for c in health["checks"] if c["name"] == "queue")
    assert "cannot use the queue database: file is not a database" in check["message"]
    await admin(addresses.admin[0], "POST", "/admin/breakers/pay?state=open")
    status, headers, _ = await post(addresses.outbound[0], "x")
    assert (status, headers["x-meshnode-error"]) == (503, "circuit-open")  # no queue: the error
