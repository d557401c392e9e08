"""Theory of operation: a node as a member of its fleet.

    store --watch--> desired version (canary/<node>, else current)
          --read versions/<v>/--> validated in memory with the node's own node.toml
          --> written whole to <policies>/.fleet/<v>/, the fleet symlink swapped
          --> the node's reload (same validation, same events, old policy stays on error)
    node  --every REPORT_INTERVAL, on change--> registry/<node>, under a lease (etcd) or a
          session (Consul) that ends ``registry_ttl`` after the node stops renewing it

A store that cannot be reached, or answers garbage, costs nothing but news: the node
serves on the snapshot it has (and starts from it after a restart), says so in its
registry entry once it is back, and catches up from the store's current state. A
version the node refuses (its files do not validate here) is recorded as rejected, with
the reasons, in the registry entry: a canary rollout reads it and stops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from meshnode.fleet.store import (
    Registration,
    Store,
    StoreAccess,
    StoreError,
    StoreGarbage,
    open_store,
)
from meshnode.fleet.versions import (
    REGISTRY,
    desired_version,
    snapshot_in_force,
    version_files,
    write_snapshot,
)
from meshnode.policy.load import PolicyError, check_snapshot
from meshnode.resilience.core.backoff import RestartBackoff

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.25  # seconds between looks at what the node would report


class Outcome(Protocol):
    @property
    def applied(self) -> bool: ...

    @property
    def errors(self) -> tuple[str, ...]: ...


Reload = Callable[[str], Awaitable[Outcome]]
Report = Callable[[], dict[str, Any]]


class FleetMember:
    def __init__(
        self,
        access: StoreAccess,
        directory: Path,
        name: str,
        *,
        reload: Reload,
        report: Report,
        ttl: float,
    ) -> None:
        """``report``: what the node says of itself in the registry (the member adds the
        fleet's part: the version in force, a rejected one, the store's state)."""
        self.access = access
        self.directory = directory
        self.name = name
        self.ttl = ttl
        self._reload = reload
        self._report = report
        self.version = snapshot_in_force(directory)  # the fleet version in force
        self.rejected: dict[str, Any] | None = None  # {"version", "errors"}
        self.store_error: str | None = None  # why the store is out of reach, if it is
        self._backoff = RestartBackoff(0.5, 10.0)

    def entry(self) -> dict[str, Any]:
        return {
            **self._report(),
            "name": self.name,
            "policy_version": self.version,
            "rejected": self.rejected,
            "store_error": self.store_error,
        }

    async def run(self) -> None:
        """Follow the store and stay registered, through outages, until cancelled."""
        while True:
            failures: list[StoreError] = []
            try:
                async with open_store(self.access) as store, trio.open_nursery() as nursery:
                    nursery.start_soon(self._stay_registered, store)
                    await self._follow(store)
            except* StoreError as group:  # from the follower, the registration, or both
                failures = [e for e in group.exceptions if isinstance(e, StoreError)]
            if failures:
                if self.store_error is None:
                    log.warning("fleet: %s; serving on version %s", failures[0], self.version)
                self.store_error = str(failures[0])
            await trio.sleep(self._backoff.next())

    async def _follow(self, store: Store) -> None:
        index = 0
        while True:
            read_index, pointers = await store.read("c")  # canary/..., current
            if self.store_error is not None:
                log.info("fleet: %s is back", store.description)
            self.store_error = None
            self._backoff.reset()
            index = max(index, read_index)
            wanted = desired_version(pointers, self.name)
            refused = self.rejected is not None and self.rejected["version"] == wanted
            if wanted is not None and wanted != self.version and not refused:
                try:
                    _, keys = await store.read(f"versions/{wanted}/")
                except StoreGarbage as exc:  # the version, not the store, is what is wrong
                    self._refuse(wanted, [str(exc)])
                else:
                    await self._take(wanted, version_files(keys, wanted))
            index = await store.wait_change(index)

    async def _take(self, version: str, files: dict[str, bytes]) -> None:
        """Validate, write, reload: the version is in force, or recorded as rejected."""
        if not files:
            self._refuse(version, [f"the store holds no files for version {version}"])
            return
        try:
            await trio.to_thread.run_sync(check_snapshot, self.directory, files)
        except PolicyError as exc:
            self._refuse(version, exc.lines)
            return
        await trio.to_thread.run_sync(write_snapshot, self.directory, version, files)
        outcome = await self._reload("store")
        if outcome.applied:
            log.info("fleet: version %s in force", version)
            self.version, self.rejected = version, None
        else:
            self._refuse(version, list(outcome.errors))

    def _refuse(self, version: str, errors: list[str]) -> None:
        log.error("fleet: version %s refused; %s stays in force:", version, self.version)
        for line in errors:
            log.error("  %s", line)
        self.rejected = {"version": version, "errors": errors}

    async def _stay_registered(self, store: Store) -> None:
        reported = _encoded(self.entry())
        registration: Registration = await store.register(
            f"{REGISTRY}{self.name}", reported, self.ttl
        )
        renew_every = self.ttl / 3
        renewed = trio.current_time()
        while True:
            await trio.sleep(REPORT_INTERVAL)
            now = _encoded(self.entry())
            if now != reported:
                await registration.update(now)
                reported = now
            if trio.current_time() - renewed >= renew_every:
                await registration.keep_alive()
                renewed = trio.current_time()


def _encoded(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True).encode()
