"""``[node] busy_poll`` as an operator uses it: set in node.toml, its cost seen on
/metrics, and turned off by a reload without a restart."""

from __future__ import annotations

import re

from tests.conftest import answering, upstream_toml, write_policies
from tests.support.client import admin, get, metrics, sample


def _with_busy_poll(directory, budget: str):
    node_file = directory / "node.toml"
    text = re.sub(r"busy_poll = .*\n", "", node_file.read_text())
    node_file.write_text(text.replace("[node]\n", f'[node]\nbusy_poll = "{budget}"\n', 1))
    return directory


async def test_busy_poll_spins_under_traffic_and_a_reload_turns_it_off(
    tmp_path, nursery, running
) -> None:
    upstream = await answering(nursery, b"ok")
    directory = write_policies(tmp_path, {"api": upstream_toml("api", upstream)})
    node, addresses = await running(_with_busy_poll(directory, "1ms"))
    for _ in range(3):
        assert await get(addresses.outbound[0], "api") == (200, b"ok")
    text = await metrics(addresses.admin[0])
    hits = sample(text, 'meshnode_busy_poll_spins_total{result="hit"}')
    misses = sample(text, 'meshnode_busy_poll_spins_total{result="miss"}')
    assert hits + misses >= 1
    assert sample(text, "meshnode_busy_poll_seconds_total") > 0

    _with_busy_poll(directory, "0s")
    status, answer = await admin(addresses.admin[0], "POST", "/admin/reload")
    assert (status, answer["applied"]) == (200, True)
    spins = node.busy_poll.hits + node.busy_poll.misses
    for _ in range(3):
        assert await get(addresses.outbound[0], "api") == (200, b"ok")
    assert node.busy_poll.hits + node.busy_poll.misses == spins
