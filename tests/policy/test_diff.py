from __future__ import annotations

import textwrap
from pathlib import Path

from meshnode.policy import load_policies
from meshnode.policy.diff import diff_policies

NODE = '[node]\nname = "n"\n'


def upstream(name: str, endpoint: str = "127.0.0.1:1") -> str:
    return textwrap.dedent(f"""
        [upstream]
        name = "{name}"
        tls = "none"
        [discovery]
        endpoints = ["{endpoint}"]
    """)


def directory(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / f"{name}.toml").write_text(text)
    return path


def test_added_removed_updated(tmp_path: Path) -> None:
    old = load_policies(directory(tmp_path / "a", node=NODE, x=upstream("x"), y=upstream("y")))
    new = load_policies(
        directory(tmp_path / "b", node=NODE, x=upstream("x", "127.0.0.1:2"), z=upstream("z"))
    )
    diff = diff_policies(old, new)
    assert (diff.added, diff.removed, diff.updated) == (("z",), ("y",), ("x",))
    assert diff.restart_required == ()
    assert not diff.empty


def test_listener_changes_need_a_restart(tmp_path: Path) -> None:
    old = load_policies(directory(tmp_path / "a", node=NODE))
    moved = (
        NODE + '[listeners.outbound]\naddress = "127.0.0.1:1"\n[admin]\naddress = "127.0.0.1:2"\n'
    )
    diff = diff_policies(old, load_policies(directory(tmp_path / "b", node=moved)))
    assert diff.restart_required == ("listeners", "admin")


def test_comments_change_the_version_but_not_the_diff(tmp_path: Path) -> None:
    old = load_policies(directory(tmp_path / "a", node=NODE, x=upstream("x")))
    new = load_policies(directory(tmp_path / "b", node=NODE, x=upstream("x") + "# note\n"))
    assert old.version != new.version
    assert diff_policies(old, new).empty
