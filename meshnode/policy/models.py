"""Validated policy types: what the node runs on, after the files were checked.

They are frozen so a request can hold the policy it started with while a reload
swaps in another. The wire shape (TOML tables) maps onto them one to one through
the converter in ``convert.py``; defaults here are the documented defaults.
"""

from __future__ import annotations

from typing import Literal

import attrs

from meshnode.policy.units import Address, Duration


@attrs.frozen
class NodeSection:
    name: str
    trust_domain: str = "mesh.local"
    state_dir: str | None = None
    drain_timeout: Duration = Duration(30)


@attrs.frozen
class OutboundListener:
    address: Address = Address("127.0.0.1", 15001)


@attrs.frozen
class Listeners:
    outbound: OutboundListener = OutboundListener()


@attrs.frozen
class AdminSection:
    address: Address = Address("127.0.0.1", 15000)


@attrs.frozen
class TimeoutPolicy:
    """``request`` bounds the whole exchange, response body included; "0s" turns it off."""

    request: Duration = Duration(10)
    per_try: Duration | None = None


@attrs.frozen
class UpstreamDefaults:
    """The ``[defaults]`` table of node.toml: upstream sections that every upstream inherits."""

    timeout: TimeoutPolicy | None = None


@attrs.frozen
class NodePolicy:
    node: NodeSection
    listeners: Listeners = Listeners()
    admin: AdminSection = AdminSection()
    defaults: UpstreamDefaults = UpstreamDefaults()


@attrs.frozen
class UpstreamSection:
    name: str
    tls: Literal["none"] = "none"
    protocol: Literal["h2"] = "h2"
    critical: bool = False


@attrs.frozen
class Route:
    """Extra traffic for an upstream: every given condition must hold."""

    authority: str | None = None
    path_prefix: str = "/"
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Endpoint:
    address: Address
    weight: int = 1
    zone: str | None = None
    metadata: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Discovery:
    backend: Literal["static"] = "static"
    endpoints: tuple[Endpoint, ...] = ()
    refresh_interval: Duration = Duration(15)


@attrs.frozen
class UpstreamPolicy:
    upstream: UpstreamSection
    discovery: Discovery
    routes: tuple[Route, ...] = ()
    timeout: TimeoutPolicy = TimeoutPolicy()

    @property
    def name(self) -> str:
        return self.upstream.name
