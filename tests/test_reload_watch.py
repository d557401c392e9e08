"""Watching the policies directory: what counts as a change, and debouncing bursts."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import trio
import trio.testing

from meshnode.policy.load import fingerprint
from meshnode.reload import watch_directory


class Calls:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


async def watching(nursery: trio.Nursery, directory: Path) -> Calls:
    calls = Calls()
    nursery.start_soon(
        functools.partial(watch_directory, directory, calls, baseline=fingerprint(directory))
    )
    await trio.testing.wait_all_tasks_blocked()
    return calls


async def test_ten_writes_in_100ms_cause_one_reload(tmp_path, nursery, autojump_clock) -> None:
    policy = tmp_path / "api.toml"
    policy.write_text("v0")
    calls = await watching(nursery, tmp_path)
    for n in range(10):
        policy.write_text(f"version {n}" + "x" * n)
        await trio.sleep(0.01)
    await trio.sleep(2)
    assert calls.count == 1


async def test_nothing_changed_means_no_reload(tmp_path, nursery, autojump_clock) -> None:
    (tmp_path / "api.toml").write_text("v0")
    calls = await watching(nursery, tmp_path)
    await trio.sleep(10)
    assert calls.count == 0


async def test_new_deleted_and_renamed_over_files_are_seen(
    tmp_path, nursery, autojump_clock
) -> None:
    (tmp_path / "api.toml").write_text("v0")
    calls = await watching(nursery, tmp_path)
    (tmp_path / "new.toml").write_text("new")
    await trio.sleep(2)
    assert calls.count == 1
    (tmp_path / "new.toml").unlink()
    await trio.sleep(2)
    assert calls.count == 2
    staged = tmp_path / ".api.toml.tmp"  # what editors and config tools do: write, then rename
    staged.write_text("v0")  # same size, same content: only the identity changes
    os.replace(staged, tmp_path / "api.toml")
    await trio.sleep(2)
    assert calls.count == 3
    (tmp_path / "notes.txt").write_text("not a policy")
    await trio.sleep(2)
    assert calls.count == 3


async def test_the_configmap_data_symlink_swap_is_seen(tmp_path, nursery, autojump_clock) -> None:
    """Kubernetes mounts a ConfigMap as name -> ..data/name, ..data -> ..<timestamp>."""
    first = tmp_path / "..2026_11_27_01"
    first.mkdir()
    (first / "api.toml").write_text("v1")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "api.toml").symlink_to("..data/api.toml")
    calls = await watching(nursery, tmp_path)
    second = tmp_path / "..2026_11_27_02"
    second.mkdir()
    (second / "api.toml").write_text("v2")
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    await trio.sleep(2)
    assert calls.count == 1
    assert (tmp_path / "api.toml").read_text() == "v2"


def test_fingerprint_ignores_what_is_not_a_policy_file(tmp_path) -> None:
    (tmp_path / "api.toml").write_text("x")
    (tmp_path / "README").write_text("y")
    (tmp_path / "dangling.toml").symlink_to("nowhere.toml")
    assert [entry[0] for entry in fingerprint(tmp_path)] == ["api.toml"]
    assert fingerprint(tmp_path / "missing") == ()


async def test_a_change_before_the_watcher_started_is_seen(
    tmp_path, nursery, autojump_clock
) -> None:
    policy = tmp_path / "api.toml"
    policy.write_text("read by the node")
    baseline = fingerprint(tmp_path)
    policy.write_text("changed before the watcher ran")
    calls = Calls()
    nursery.start_soon(functools.partial(watch_directory, tmp_path, calls, baseline=baseline))
    await trio.sleep(2)
    assert calls.count == 1
