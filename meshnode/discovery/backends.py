"""The source for a ``[discovery]`` section: one backend per ``backend`` value.

A registry's backend is imported when an upstream first uses it: a node that
discovers nothing through DNS, Consul, etcd or Kubernetes does not carry their
clients (dnspython, httpx, PyYAML: several MiB of resident memory each).
"""

from __future__ import annotations

import importlib
from typing import cast

from meshnode.discovery.file import FileSource
from meshnode.discovery.source import Source, StaticSource
from meshnode.policy.models import Discovery, FileDiscovery, StaticDiscovery


def make_source(policy: Discovery, upstream: str) -> Source:
    """``upstream`` names the service where the policy does not. Each registry's module
    (``meshnode.discovery.<backend>``) makes its source with ``source(policy, upstream)``."""
    if isinstance(policy, StaticDiscovery):
        return StaticSource(policy)
    if isinstance(policy, FileDiscovery):
        return FileSource(policy)
    backend = importlib.import_module(f"meshnode.discovery.{policy.backend}")
    return cast(Source, backend.source(policy, upstream))
