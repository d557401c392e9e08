"""Endpoints from Consul: ``/v1/health/service/<service>?passing=true`` as blocking queries.

Following Consul's documented client rules for blocking queries: the first
query has no index; each next one sends the last ``X-Consul-Index`` with
``wait``, and hangs until the service changes or ``wait`` passes (a return is
no promise of a change: an unchanged index publishes nothing). An index that
goes backwards (a restored snapshot, a new cluster) resets to 0, and so does
one that is not above zero. Queries that come back quickly are spaced at
least ``MIN_QUERY_INTERVAL`` apart, so a Consul that answers at once cannot
turn the watch into a tight loop. The ACL token is read from ``token_file``
before each query (it can be rotated), and an https ``consul_url`` is
verified against ``ca_file`` when given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import httpx
import trio

from meshnode.discovery.entries import endpoint_at, some_or_garbage
from meshnode.discovery.http import registry_client
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import ConsulDiscovery, Endpoint

log = logging.getLogger(__name__)

MIN_QUERY_INTERVAL = 1.0
WAIT_MARGIN = 15.0  # Consul adds up to wait/16 of jitter; the read timeout allows for it


class ConsulSource:
    def __init__(self, policy: ConsulDiscovery, upstream: str) -> None:
        self._policy = policy
        service = policy.service or upstream
        self._url = f"{policy.consul_url.rstrip('/')}/v1/health/service/{quote(service, safe='')}"
        self._params = {"passing": "true"}
        if policy.tag is not None:
            self._params["tag"] = policy.tag
        if policy.datacenter is not None:
            self._params["dc"] = policy.datacenter
        self.description = f"consul {policy.consul_url} service {service}"

    async def watch(self, found: Found) -> None:
        policy = self._policy
        index = 0
        client = registry_client(read_timeout=policy.wait + WAIT_MARGIN, ca_file=policy.ca_file)
        async with client:
            while True:
                started = trio.current_time()
                params = dict(self._params)
                if index:
                    params.update(index=str(index), wait=f"{int(policy.wait)}s")
                response = await client.get(self._url, params=params, headers=self._headers())
                if response.status_code != 200:
                    raise DiscoveryError(
                        f"consul answered {response.status_code}: {response.text[:200].strip()}"
                    )
                answered = _index_of(response)
                if answered != index or not index:
                    found(self._endpoints(response))
                if answered < index:
                    log.warning("consul index went back from %d to %d: resetting", index, answered)
                index = answered if answered >= index else 0
                rest = MIN_QUERY_INTERVAL - (trio.current_time() - started)
                if rest > 0:
                    await trio.sleep(rest)

    def _headers(self) -> dict[str, str]:
        if self._policy.token_file is None:
            return {}
        try:
            token = Path(self._policy.token_file).read_text().strip()
        except OSError as exc:
            raise DiscoveryError(f"{self._policy.token_file}: {exc.strerror}") from exc
        return {"X-Consul-Token": token}

    def _endpoints(self, response: httpx.Response) -> list[Endpoint]:
        try:
            entries = response.json()
        except ValueError as exc:
            raise DiscoveryError(f"consul answered something that is not JSON: {exc}") from exc
        if not isinstance(entries, list):
            raise DiscoveryError("consul answered JSON that is not a list of service entries")
        endpoints = []
        for position, entry in enumerate(entries):
            endpoint = _endpoint_of(entry, f"{self.description} entry {position}")
            if endpoint is not None:
                endpoints.append(endpoint)
        return some_or_garbage(endpoints, len(entries) - len(endpoints), self.description)


def _index_of(response: httpx.Response) -> int:
    """The X-Consul-Index; not above zero means "start again" (Consul's sanity rule)."""
    value = response.headers.get("X-Consul-Index", "")
    if not value.isdigit():
        raise DiscoveryError(f"consul sent no usable X-Consul-Index ({value!r})")
    return max(0, int(value))


def _endpoint_of(entry: object, where: str) -> Endpoint | None:
    """A service entry's address (the service's own, else its node's), port, weight, meta."""
    if not isinstance(entry, dict):
        return endpoint_at("", 0, where)
    service = entry.get("Service") or {}
    node = entry.get("Node") or {}
    if not isinstance(service, dict) or not isinstance(node, dict):
        return endpoint_at("", 0, where)
    weights = service.get("Weights") or {}
    weight = weights.get("Passing", 1) if isinstance(weights, dict) else 1
    meta = service.get("Meta") or {}
    metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return endpoint_at(
        service.get("Address") or node.get("Address") or "",
        service.get("Port"),  # type: ignore[arg-type]
        where,
        weight=weight if isinstance(weight, int) else 1,
        zone=node.get("Datacenter") if isinstance(node.get("Datacenter"), str) else None,
        metadata=metadata,
    )


def source(policy: ConsulDiscovery, upstream: str) -> ConsulSource:
    """The backend's source (see ``discovery.backends.make_source``)."""
    return ConsulSource(policy, upstream)
