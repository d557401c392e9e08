"""Policy versions in the store, and on a node's disk.

A version is the content hash of a pushed directory's upstream files (``fleet_version``),
so every node that runs it can say so in the same words. The store keeps each version's
files under ``versions/<version>/``; ``current`` names the version the fleet runs and
``canary/<node>`` the one a node runs instead while a rollout waits on it.

On a node's disk the snapshot it runs is ``<policies>/fleet``, a symlink to
``<policies>/.fleet/<version>/``: a new snapshot is written whole into a directory of its
own, then the symlink is replaced in one ``rename`` (never a half-written file, and the
node starts from the last good snapshot after a restart, store or no store).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from meshnode.policy.load import FLEET_DIR, NODE_FILE, content_version

CURRENT = "current"
CANARY = "canary/"
VERSIONS = "versions/"
REGISTRY = "registry/"
SNAPSHOTS = ".fleet"
KEPT_SNAPSHOTS = 3  # the one in force and the two before it, for a look back


def fleet_version(files: Mapping[str, bytes]) -> str:
    return content_version(sorted(files.items()))


def upstream_files(directory: Path) -> dict[str, bytes]:
    """What ``policy push`` sends of a directory: its upstream files (node.toml is each
    node's own, and so is a fleet snapshot the directory holds)."""
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.glob("*.toml"))
        if path.name != NODE_FILE
    }


def desired_version(pointers: Mapping[str, bytes], node: str) -> str | None:
    """The version ``node`` should run: its canary's, else the fleet's (None: none pushed)."""
    chosen = pointers.get(CANARY + node) or pointers.get(CURRENT)
    return chosen.decode("ascii", errors="replace").strip() if chosen else None


def version_files(keys: Mapping[str, bytes], version: str) -> dict[str, bytes]:
    prefix = f"{VERSIONS}{version}/"
    return {key[len(prefix) :]: value for key, value in keys.items() if key.startswith(prefix)}


def snapshot_in_force(directory: Path) -> str | None:
    """The version of the snapshot ``directory`` holds, if any."""
    try:
        return Path(os.readlink(directory / FLEET_DIR)).name
    except OSError:
        return None


def write_snapshot(directory: Path, version: str, files: Mapping[str, bytes]) -> None:
    """Make ``files`` the directory's fleet snapshot: written whole, then swapped in."""
    snapshots = directory / SNAPSHOTS
    snapshots.mkdir(exist_ok=True)
    target = snapshots / version
    if not target.is_dir():
        building = snapshots / f".{version}.partial"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        for name, text in files.items():
            with open(building / name, "wb") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        os.replace(building, target)
    link = directory / f".{FLEET_DIR}.new"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(SNAPSHOTS) / version)
    os.replace(link, directory / FLEET_DIR)
    _forget_old(snapshots, version)


def _forget_old(snapshots: Path, keep: str) -> None:
    versions = sorted(
        (path for path in snapshots.iterdir() if path.is_dir() and not path.name.startswith(".")),
        key=lambda path: path.stat().st_mtime,
    )
    for path in versions[:-KEPT_SNAPSHOTS]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
