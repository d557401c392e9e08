"""Hot reload: watch the policies directory, then parse, validate, diff and apply.

Three triggers lead here: a change in the directory (seen by polling, so edits,
new and deleted files, atomic rename-over and the Kubernetes ConfigMap
``..data`` symlink swap all look the same: a file's identity or size or mtime
changed), SIGHUP, and ``POST /admin/reload``. A burst of writes is debounced
into one reload: after a change is seen, the directory must stay unchanged for
``quiet`` seconds. Reloads are serialized. The whole set is validated before
anything is applied; on any error the policies in force stay, and the errors
are logged, kept for ``/admin/policies`` and published as ``policy-rejected``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from meshnode.events import EventBus, PolicyRejected, PolicyReloaded
from meshnode.policy import PolicyError, PolicySet, load_policies
from meshnode.policy.diff import PolicyDiff, diff_policies
from meshnode.policy.load import Fingerprint, fingerprint

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
QUIET_PERIOD = 0.25


async def watch_directory(
    directory: Path,
    on_change: Callable[[], Awaitable[object]],
    *,
    baseline: Fingerprint,
    poll_interval: float = POLL_INTERVAL,
    quiet: float = QUIET_PERIOD,
) -> None:
    """Call ``on_change`` once per settled burst of changes in ``directory``.

    ``baseline`` is the fingerprint taken when the policies in force were read,
    so a change made between that read and this watcher's start is not missed.
    """
    last = baseline
    while True:
        await trio.sleep(poll_interval)
        current = fingerprint(directory)
        if current == last:
            continue
        while True:
            await trio.sleep(quiet)
            settled = fingerprint(directory)
            if settled == current:
                break
            current = settled
        last = current
        await on_change()


@attrs.frozen
class ReloadResult:
    applied: bool
    version: str
    diff: PolicyDiff | None = None
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if not self.applied:
            return {"applied": False, "version": self.version, "errors": list(self.errors)}
        changes = self.diff.to_json() if self.diff is not None else None
        return {"applied": True, "version": self.version, "changes": changes}


@attrs.frozen
class LastError:
    at: float
    trigger: str
    errors: tuple[str, ...]


class Reloader:
    """Keeps the last good policy set and applies new ones through ``apply``."""

    def __init__(
        self,
        current: PolicySet,
        apply: Callable[[PolicySet, PolicyDiff], Awaitable[None]],
        bus: EventBus,
        clock: Callable[[], float],
    ) -> None:
        self.current = current
        self.loaded_at = clock()
        self.last_error: LastError | None = None
        self.reloads = {"applied": 0, "unchanged": 0, "rejected": 0}
        self._apply = apply
        self._bus = bus
        self._clock = clock
        self._lock = trio.Lock()

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            try:
                new = load_policies(self.current.directory)
            except PolicyError as exc:
                return self._reject(trigger, exc.lines)
            diff = diff_policies(self.current, new)
            if new.version == self.current.version:
                self.reloads["unchanged"] += 1
                return ReloadResult(True, new.version, diff)
            for setting in diff.restart_required:
                log.warning("policy reload: %s changed; it takes effect at restart", setting)
            await self._apply(new, diff)
            previous, self.current = self.current, new
            self.loaded_at = self._clock()
            self.reloads["applied"] += 1
            log.info(
                "policies reloaded (%s): version %s -> %s; added %s, removed %s, updated %s",
                trigger,
                previous.version,
                new.version,
                list(diff.added),
                list(diff.removed),
                list(diff.updated),
            )
            self._bus.publish(
                PolicyReloaded(
                    version=new.version,
                    previous_version=previous.version,
                    trigger=trigger,
                    added=list(diff.added),
                    removed=list(diff.removed),
                    updated=list(diff.updated),
                )
            )
            return ReloadResult(True, new.version, diff)

    def _reject(self, trigger: str, errors: list[str]) -> ReloadResult:
        self.reloads["rejected"] += 1
        self.last_error = LastError(self._clock(), trigger, tuple(errors))
        log.error(
            "policy reload (%s) rejected; version %s stays in force:", trigger, self.current.version
        )
        for line in errors:
            log.error("  %s", line)
        self._bus.publish(PolicyRejected(trigger=trigger, errors=list(errors)))
        return ReloadResult(False, self.current.version, errors=tuple(errors))
