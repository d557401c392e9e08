"""The upstreams the request path can reach, as of the policies in force."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from meshnode.errors import NoHealthyEndpoints
from meshnode.policy.models import Endpoint, UpstreamPolicy
from meshnode.resilience.balancer import RoundRobin


@attrs.define
class Upstream:
    policy: UpstreamPolicy
    endpoints: tuple[Endpoint, ...]
    picker: RoundRobin[Endpoint] = attrs.field(factory=RoundRobin)

    @property
    def name(self) -> str:
        return self.policy.name

    def pick(self) -> Endpoint:
        endpoint = self.picker.pick(self.endpoints)
        if endpoint is None:
            raise NoHealthyEndpoints("no endpoint is available", self.name)
        return endpoint


def upstreams_from(policies: Mapping[str, UpstreamPolicy]) -> dict[str, Upstream]:
    return {name: Upstream(policy, policy.discovery.endpoints) for name, policy in policies.items()}
