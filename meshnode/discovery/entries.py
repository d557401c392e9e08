"""Endpoint entries read from registries (pure): each one checked, the bad ones skipped.

File and etcd entries have the shape of ``[discovery] endpoints``: ``"host:port"``
or ``{address, weight, zone, metadata}``. A registry is written by other
programs and people: one malformed entry is logged and skipped, never a crash,
and never the end of the others.
"""

from __future__ import annotations

import logging

from meshnode.discovery.source import DiscoveryError
from meshnode.policy.convert import converter, error_lines
from meshnode.policy.models import Endpoint
from meshnode.policy.units import Address

log = logging.getLogger(__name__)


def parse_entries(entries: object, source: str) -> tuple[list[Endpoint], int]:
    """The endpoints among ``entries`` (a list), and how many entries were skipped."""
    if not isinstance(entries, list):
        raise ValueError(f"expected a list of endpoints, got {type(entries).__name__}")
    endpoints = []
    skipped = 0
    for index, entry in enumerate(entries):
        endpoint = parse_entry(entry, f"{source}[{index}]")
        if endpoint is None:
            skipped += 1
        else:
            endpoints.append(endpoint)
    return endpoints, skipped


def some_or_garbage(endpoints: list[Endpoint], skipped: int, source: str) -> list[Endpoint]:
    """``endpoints``, unless every entry was malformed: then the answer is garbage, and
    the last known endpoints must stay rather than drop to none."""
    if skipped and not endpoints:
        raise DiscoveryError(f"{source}: all {skipped} entries are malformed")
    return endpoints


def parse_entry(entry: object, where: str) -> Endpoint | None:
    try:
        endpoint = converter.structure(entry, Endpoint)
    except Exception as exc:  # cattrs raises groups of leaf errors
        reasons = "; ".join(f"{key}: {reason}" for key, reason in error_lines(exc))
        log.error("discovery: %s skipped: %s", where, reasons or exc)
        return None
    return usable(endpoint, where)


def usable(endpoint: Endpoint, where: str) -> Endpoint | None:
    """``endpoint`` if traffic can go to it (a port, a positive weight), else None (logged)."""
    problem = None
    if not 1 <= endpoint.address.port <= 65535:
        problem = f"port {endpoint.address.port} is out of range"
    elif endpoint.weight < 1:
        problem = f"weight {endpoint.weight} is not positive"
    if problem is None:
        return endpoint
    log.error("discovery: %s skipped: %s", where, problem)
    return None


def endpoint_at(host: str, port: int, where: str, **fields: object) -> Endpoint | None:
    """An endpoint from a registry's separate host and port fields, if they make one."""
    if not isinstance(host, str) or not host or not isinstance(port, int):
        log.error("discovery: %s skipped: no usable host and port", where)
        return None
    return usable(Endpoint(Address(host, port), **fields), where)  # type: ignore[arg-type]
