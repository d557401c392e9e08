"""``meshnode policy push`` and ``meshnode fleet status``: the operator's side of the fleet.

A push writes a validated directory's upstream files as a new version and points the
fleet at it, in one transaction. With canaries, it first points only the named nodes at
it (``canary/<node>``), waits until each reports the version in force and ready, and
only then writes ``current`` for everyone; a canary that refuses the version, or does
not report it in time, stops the rollout: the canary keys are removed (the canaries go
back to the fleet's version) and the push says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from meshnode.fleet.store import Store, StoreAccess, open_store
from meshnode.fleet.versions import (
    CANARY,
    CURRENT,
    REGISTRY,
    VERSIONS,
    fleet_version,
    upstream_files,
)

POLL = 0.25  # seconds between looks at the canaries' registry entries


class RolloutStopped(Exception):
    """A canary refused the version, or did not report it in force and ready in time."""


async def push(
    access: StoreAccess,
    directory: Path,
    *,
    canaries: Sequence[str] = (),
    wait: float = 60.0,
    say: Callable[[str], None] = print,
) -> str:
    """Push ``directory``'s upstream files (validated by the caller) as a version; return it."""
    files = upstream_files(directory)
    version = fleet_version(files)
    puts = {f"{VERSIONS}{version}/{name}": text for name, text in files.items()}
    async with open_store(access) as store:
        if canaries:
            marks = {f"{CANARY}{node}": version.encode() for node in canaries}
            await store.commit({**puts, **marks})
            say(f"version {version} written for {', '.join(canaries)}; waiting for them")
            try:
                await _wait_for_canaries(store, version, canaries, wait, say)
            except RolloutStopped:
                await store.commit({}, tuple(marks))
                raise
            puts = {}
        await store.commit({**puts, CURRENT: version.encode()}, (CANARY,))
    say(f"version {version} is the fleet's")
    return version


async def _wait_for_canaries(
    store: Store, version: str, canaries: Sequence[str], wait: float, say: Callable[[str], None]
) -> None:
    waiting = ""
    with trio.move_on_after(wait):
        while True:
            entries = await registry(store)
            waiting = ""
            for node in canaries:
                entry = entries.get(node)
                rejected = (entry or {}).get("rejected") or {}
                if rejected.get("version") == version:
                    errors = "; ".join(rejected.get("errors") or ["no reason given"])
                    raise RolloutStopped(
                        f"canary {node} refused version {version}: {errors}; rollout stopped"
                    )
                if entry is None:
                    waiting = f"{node} is not in the registry"
                elif entry.get("policy_version") != version or not entry.get("ready"):
                    waiting = (
                        f"{node} reports version {entry.get('policy_version')}, "
                        f"ready={entry.get('ready')}"
                    )
            if not waiting:
                say(f"canaries run version {version} and are ready")
                return
            await trio.sleep(POLL)
    raise RolloutStopped(f"no canary answer within {wait:g}s ({waiting}); rollout stopped")


async def registry(store: Store) -> dict[str, dict[str, Any]]:
    """The nodes registered now, by name (an entry that is not JSON is shown as such)."""
    _, keys = await store.read(REGISTRY)
    entries = {}
    for key, value in keys.items():
        try:
            entry = json.loads(value)
        except ValueError:
            entry = {"garbage": value[:80].decode(errors="replace")}
        entries[key[len(REGISTRY) :]] = entry if isinstance(entry, dict) else {"garbage": "?"}
    return entries


async def fleet_status(access: StoreAccess) -> dict[str, Any]:
    async with open_store(access) as store:
        _, pointers = await store.read(CURRENT)
        nodes = await registry(store)
    current = pointers.get(CURRENT)
    return {"current": current.decode() if current else None, "nodes": nodes}


def status_table(status: dict[str, Any]) -> str:
    """The fleet as a table: which nodes run another version than the one pushed, and which
    are not ready, say so in NOTE."""
    current = status["current"]
    rows = [("NODE", "VERSION", "READY", "OPEN BREAKERS", "OUTBOUND", "NOTE")]
    for name, entry in sorted(status["nodes"].items()):
        notes = []
        version = entry.get("policy_version")
        if current is not None and version != current:
            notes.append(f"not on the pushed version {current}")
        if not entry.get("ready"):
            notes.append("not ready")
        rejected = entry.get("rejected")
        if rejected:
            notes.append(
                f"refused {rejected.get('version')}: {(rejected.get('errors') or ['?'])[0]}"
            )
        if entry.get("store_error"):
            notes.append(f"store: {entry['store_error']}")
        if "garbage" in entry:
            notes.append(f"unreadable entry: {entry['garbage']!r}")
        rows.append(
            (
                name,
                str(version or "-"),
                "yes" if entry.get("ready") else "no",
                ", ".join(entry.get("open_breakers") or []) or "-",
                ", ".join((entry.get("addresses") or {}).get("outbound") or []) or "-",
                "; ".join(notes) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    header = f"fleet version: {current or 'none pushed'}; {len(rows) - 1} node(s)"
    return "\n".join([header, *(line.rstrip() for line in lines)])
