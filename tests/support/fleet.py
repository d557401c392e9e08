"""What the fleet tests share: a node.toml that takes its policies from a store, a
directory to push, and waiting for the fleet to settle."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path


def fleet_node_toml(name: str, url: str, ttl: float, *, sections: str = "") -> str:
    """A node named ``name`` following the store at ``url``; ``sections``: its listeners,
    TLS and anything else (default: outbound and admin on loopback, port 0)."""
    listeners = sections or (
        '[listeners.outbound]\naddress = "127.0.0.1:0"\n[admin]\naddress = "127.0.0.1:0"\n'
    )
    node = textwrap.dedent(f"""
        [node]
        name = "{name}"
        drain_timeout = "2s"
        policy_source = "{url}"
        """)
    return node + listeners + f'[fleet]\nregistry_ttl = "{ttl:g}s"\n'


def push_dir(tmp_path: Path, label: str, node_toml: str, **files: str) -> Path:
    """A directory to push: a node.toml to validate against, and the upstream files."""
    directory = tmp_path / f"push-{label}"
    directory.mkdir()
    (directory / "node.toml").write_text(node_toml)
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text)
    return directory


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Seconds ``condition`` took to hold (asked every 50 ms), failing after ``within``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.05)
    return time.monotonic() - started
