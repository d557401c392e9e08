"""What a reload changes (pure): upstreams added, removed and updated, and node settings."""

from __future__ import annotations

import attrs

from meshnode.policy.load import PolicySet


@attrs.frozen
class PolicyDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    updated: tuple[str, ...]
    restart_required: tuple[str, ...]  # node settings that only a restart applies

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated or self.restart_required)

    def to_json(self) -> dict[str, list[str]]:
        return {key: list(value) for key, value in attrs.asdict(self).items()}


def diff_policies(old: PolicySet, new: PolicySet) -> PolicyDiff:
    before, after = old.upstreams, new.upstreams
    restart = []
    if old.node.listeners != new.node.listeners:
        restart.append("listeners")
    if old.node.admin.address != new.node.admin.address:
        restart.append("admin")
    if old.node.tls != new.node.tls:
        restart.append("tls")
    if (old.node.node.policy_source, old.node.fleet) != (
        new.node.node.policy_source,
        new.node.fleet,
    ):
        restart.append("fleet")
    return PolicyDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        updated=tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])),
        restart_required=tuple(restart),
    )
