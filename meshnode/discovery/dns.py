"""Endpoints from DNS (dnspython over Trio): SRV records, or A/AAAA records and a port.

SRV: only the lowest priority present is used (RFC 2782: the others are
backups), each target's weight becomes its endpoint's weight (0 counts as 1),
and targets are resolved to addresses from the answer's additional section or
by asking. The next query comes after the answer's TTL, kept within
``min_ttl`` and ``refresh_interval``. A name that does not exist, or has no
records of the type, is an empty answer; a resolver that fails or times out
is a registry failure (the last endpoints stay).
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import trio

from meshnode.discovery.entries import endpoint_at
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import DNSDiscovery, Endpoint

QUERY_TIMEOUT = 5.0
_ADDRESS_TYPES = ("A", "AAAA")


class DNSSource:
    def __init__(self, policy: DNSDiscovery) -> None:
        self._policy = policy
        resolver = dns.asyncresolver.Resolver(configure=policy.resolver is None)
        if policy.resolver is not None:
            resolver.nameservers = [policy.resolver.host]
            resolver.port = policy.resolver.port
        resolver.lifetime = QUERY_TIMEOUT
        self._resolver = resolver
        record = "SRV" if policy.port is None else f"A/AAAA port {policy.port}"
        self.description = f"dns {policy.name} ({record})"

    async def watch(self, found: Found) -> None:
        policy = self._policy
        while True:
            if policy.port is None:
                endpoints, ttl = await self._service_records()
            else:
                endpoints, ttl = await self._addresses(policy.name, policy.port, 1)
            found(endpoints)
            await trio.sleep(min(max(ttl, policy.min_ttl), policy.refresh_interval))

    async def _service_records(self) -> tuple[list[Endpoint], float]:
        answer = await self._query(self._policy.name, "SRV")
        if answer is None or answer.rrset is None:
            return [], self._policy.refresh_interval
        records = list(answer)
        best = min(record.priority for record in records)
        known = _additional_addresses(answer)
        endpoints: list[Endpoint] = []
        ttl = float(answer.rrset.ttl)
        for record in records:
            if record.priority != best:
                continue
            target = record.target.to_text()
            weight = max(1, record.weight)
            if target in known:
                endpoints.extend(
                    endpoint
                    for host in known[target]
                    if (endpoint := endpoint_at(host, record.port, target, weight=weight))
                )
            else:
                found, target_ttl = await self._addresses(target, record.port, weight)
                endpoints.extend(found)
                ttl = min(ttl, target_ttl)
        return endpoints, ttl

    async def _addresses(self, name: str, port: int, weight: int) -> tuple[list[Endpoint], float]:
        endpoints: list[Endpoint] = []
        ttl = float(self._policy.refresh_interval)
        for record_type in _ADDRESS_TYPES:
            answer = await self._query(name, record_type)
            if answer is None or answer.rrset is None:
                continue
            ttl = min(ttl, float(answer.rrset.ttl))
            endpoints.extend(
                endpoint
                for record in answer
                if (endpoint := endpoint_at(record.address, port, name, weight=weight))
            )
        return endpoints, ttl

    async def _query(self, name: str, record_type: str) -> dns.resolver.Answer | None:
        """The answer, None when the name or the records do not exist; raises on failure."""
        try:
            return await self._resolver.resolve(name, record_type, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DiscoveryError(f"{record_type} {name}: {exc}") from exc


def _additional_addresses(answer: dns.resolver.Answer) -> dict[str, list[str]]:
    """The A/AAAA records that came along with an SRV answer, by target name."""
    known: dict[str, list[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            known.setdefault(rrset.name.to_text(), []).extend(r.address for r in rrset)
    return known


def source(policy: DNSDiscovery, upstream: str) -> DNSSource:
    """The backend's source (see ``discovery.backends.make_source``)."""
    return DNSSource(policy)
