"""Endpoints from a file: a JSON list, or TOML with ``endpoints = [...]``, shaped like
``[discovery] endpoints``, looked at every ``refresh_interval`` and read again when it
changes (its size, modification time or inode: an atomic rename counts)."""

from __future__ import annotations

import json
import os
import tomllib

import trio

from meshnode.discovery.entries import parse_entries, some_or_garbage
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import Endpoint, FileDiscovery


class FileSource:
    def __init__(self, policy: FileDiscovery) -> None:
        self._path = policy.path
        self._interval = policy.refresh_interval
        self.description = f"file {self._path}"

    async def watch(self, found: Found) -> None:
        seen: tuple[int, int, int] | None = None
        while True:
            try:
                status = await trio.to_thread.run_sync(os.stat, self._path)
            except OSError as exc:
                raise DiscoveryError(f"{self._path}: {exc.strerror}") from exc
            stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
            if stamp != seen:
                found(await self._read())
                seen = stamp
            await trio.sleep(self._interval)

    async def _read(self) -> list[Endpoint]:
        try:
            text = await trio.Path(self._path).read_bytes()
        except OSError as exc:
            raise DiscoveryError(f"{self._path}: {exc.strerror}") from exc
        try:
            if self._path.endswith(".toml"):
                entries = tomllib.loads(text.decode()).get("endpoints")
            else:
                entries = json.loads(text)
            endpoints, skipped = parse_entries(entries, self._path)
        except (ValueError, UnicodeDecodeError) as exc:  # JSON and TOML errors are ValueErrors
            raise DiscoveryError(f"{self._path}: {exc}") from exc
        return some_or_garbage(endpoints, skipped, self._path)
