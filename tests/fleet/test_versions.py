"""Fleet versions on a node's disk and in the store's keys (no store needed)."""

from __future__ import annotations

import os
from pathlib import Path

from meshnode.fleet.rollout import status_table
from meshnode.fleet.versions import (
    KEPT_SNAPSHOTS,
    desired_version,
    fleet_version,
    snapshot_in_force,
    upstream_files,
    version_files,
    write_snapshot,
)
from meshnode.policy import load_policies

NODE = '[node]\nname = "n"\n[listeners.outbound]\naddress = "127.0.0.1:0"\n'
API = '[upstream]\nname = "api"\ntls = "none"\n[discovery]\nendpoints = ["127.0.0.1:1"]\n'


def test_a_canary_mark_wins_over_the_fleets_version() -> None:
    pointers = {"current": b"v1", "canary/b": b"v2"}
    assert (desired_version(pointers, "a"), desired_version(pointers, "b")) == ("v1", "v2")
    assert desired_version({}, "a") is None


def test_a_version_is_the_content_of_the_files_not_the_directory(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "node.toml").write_text(f'[node]\nname = "{name}"\n')
        (tmp_path / name / "api.toml").write_text(API)
    one, two = upstream_files(tmp_path / "one"), upstream_files(tmp_path / "two")
    assert one == two == {"api.toml": API.encode()}  # node.toml is each node's own
    assert fleet_version(one) == fleet_version(two) != fleet_version({"api.toml": b"x"})
    keys = {"versions/v1/api.toml": b"a", "versions/v10/api.toml": b"b"}
    assert version_files(keys, "v1") == {"api.toml": b"a"}


def test_a_snapshot_is_swapped_in_whole_and_loaded_with_the_node_file(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(NODE)
    write_snapshot(tmp_path, "v1", {"api.toml": API.encode()})
    assert snapshot_in_force(tmp_path) == "v1"
    assert set(load_policies(tmp_path).upstreams) == {"api"}
    first = os.stat(tmp_path / "fleet").st_ino
    write_snapshot(
        tmp_path, "v2", {"api.toml": API.encode(), "b.toml": API.replace("api", "b").encode()}
    )
    assert snapshot_in_force(tmp_path) == "v2" and os.stat(tmp_path / "fleet").st_ino != first
    assert set(load_policies(tmp_path).upstreams) == {"api", "b"}
    assert not list((tmp_path / ".fleet").glob(".*.partial"))  # nothing half-written left


def test_old_snapshots_are_forgotten_but_the_last_few_kept(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(NODE)
    for number in range(KEPT_SNAPSHOTS + 2):
        write_snapshot(tmp_path, f"v{number}", {"api.toml": API.encode()})
    kept = sorted(path.name for path in (tmp_path / ".fleet").iterdir())
    assert len(kept) == KEPT_SNAPSHOTS and f"v{KEPT_SNAPSHOTS + 1}" in kept


def test_the_status_table_says_who_is_behind_not_ready_or_refusing() -> None:
    status = {
        "current": "v2",
        "nodes": {
            "a": {"policy_version": "v2", "ready": True, "addresses": {"outbound": ["1.1.1.1:1"]}},
            "b": {"policy_version": "v1", "ready": False, "open_breakers": ["api"]},
            "c": {
                "policy_version": "v1",
                "ready": True,
                "rejected": {"version": "v2", "errors": ["api.toml: retry: bad"]},
            },
        },
    }
    lines = status_table(status).splitlines()
    assert lines[0] == "fleet version: v2; 3 node(s)"
    row = {line.split()[0]: line for line in lines[2:]}
    assert row["a"].rstrip().endswith("-")
    assert "not on the pushed version v2; not ready" in row["b"] and "api" in row["b"]
    assert "refused v2: api.toml: retry: bad" in row["c"]
