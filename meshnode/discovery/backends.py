"""The source for a ``[discovery]`` section: one backend per ``backend`` value."""

from __future__ import annotations

from meshnode.discovery.consul import ConsulSource
from meshnode.discovery.dns import DNSSource
from meshnode.discovery.etcd import EtcdSource
from meshnode.discovery.file import FileSource
from meshnode.discovery.kubernetes import KubernetesSource
from meshnode.discovery.source import Source, StaticSource
from meshnode.policy.models import (
    ConsulDiscovery,
    Discovery,
    DNSDiscovery,
    EtcdDiscovery,
    FileDiscovery,
    KubernetesDiscovery,
    StaticDiscovery,
)


def make_source(policy: Discovery, upstream: str) -> Source:
    """``upstream`` names the service where the policy does not."""
    if isinstance(policy, StaticDiscovery):
        return StaticSource(policy)
    if isinstance(policy, FileDiscovery):
        return FileSource(policy)
    if isinstance(policy, DNSDiscovery):
        return DNSSource(policy)
    if isinstance(policy, ConsulDiscovery):
        return ConsulSource(policy, upstream)
    if isinstance(policy, EtcdDiscovery):
        return EtcdSource(policy, upstream)
    if isinstance(policy, KubernetesDiscovery):
        return KubernetesSource(policy, upstream)
    raise AssertionError(f"no source for {policy!r}")
