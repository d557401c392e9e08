"""Endpoints from Kubernetes EndpointSlices (``discovery.k8s.io/v1``): list, then watch.

The slices of a Service carry the label ``kubernetes.io/service-name``. The
source lists them, then watches from the list's ``resourceVersion`` with
bookmarks on (so an idle watch still advances its version), and watches again
from the last version seen whenever the server ends a watch. A version the
server no longer has (410 Gone, as an HTTP status or as an ERROR event) means
listing again. Only endpoints whose ``ready`` condition is not false are used
(an absent condition counts as ready, as the API documents), on the port named
by ``port`` (or numbered by it; the slice's only port when absent).

Credentials come from a kubeconfig file, or in-cluster from the service account
(``KUBERNETES_SERVICE_HOST``/``_PORT``, the CA and the token under
``service_account_dir``); the token is read again before each request, since
the kubelet rotates it.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import yaml

from meshnode.discovery.entries import endpoint_at
from meshnode.discovery.http import json_object, registry_client
from meshnode.discovery.source import DiscoveryError, Found
from meshnode.policy.models import Endpoint, KubernetesDiscovery

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # each watch asks the server to end it after this long
GONE = 410


@attrs.frozen
class Cluster:
    """Where the API server is and how to prove who we are to it."""

    server: str
    ca_file: str | None
    token_file: str | None = None
    token: str | None = None
    client_cert: tuple[str, str] | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise DiscoveryError(f"{self.token_file}: {exc.strerror}") from exc
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster(service_account_dir: str) -> Cluster:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise DiscoveryError(
            "not in a cluster (KUBERNETES_SERVICE_HOST is unset) and no kubeconfig"
        )
    host = f"[{host}]" if ":" in host else host
    directory = Path(service_account_dir)
    return Cluster(f"https://{host}:{port}", str(directory / "ca.crt"), str(directory / "token"))


def from_kubeconfig(path: str) -> Cluster:
    """The current context's cluster and user: server, CA, and a token or client certificate."""
    try:
        config = yaml.safe_load(Path(path).read_text())
        context = _named(config["contexts"], config["current-context"])["context"]
        cluster = _named(config["clusters"], context["cluster"])["cluster"]
        user = (
            _named(config.get("users", []), context.get("user"))["user"]
            if context.get("user")
            else {}
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DiscoveryError(f"{path}: not a usable kubeconfig: {exc}") from exc
    base = Path(path).parent
    cert = _file_or_data(user, "client-certificate", base)
    key = _file_or_data(user, "client-key", base)
    return Cluster(
        server=cluster["server"],
        ca_file=_file_or_data(cluster, "certificate-authority", base),
        token_file=str(base / user["tokenFile"]) if "tokenFile" in user else None,
        token=user.get("token"),
        client_cert=(cert, key) if cert and key else None,
    )


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def _file_or_data(section: dict[str, Any], key: str, base: Path) -> str | None:
    """A kubeconfig file name (relative to the kubeconfig), or its ``-data`` in a private file."""
    if key in section:
        return str(base / section[key])
    data = section.get(f"{key}-data")
    if data is None:
        return None
    handle, name = tempfile.mkstemp(prefix="meshnode-kube-", suffix=".pem")
    with os.fdopen(handle, "wb") as written:
        written.write(base64.b64decode(data))
    return name


class KubernetesSource:
    def __init__(self, policy: KubernetesDiscovery, upstream: str) -> None:
        self._policy = policy
        service = policy.service or upstream
        self._path = (
            f"/apis/discovery.k8s.io/v1/namespaces/{quote(policy.namespace, safe='')}"
            "/endpointslices"
        )
        self._selector = f"kubernetes.io/service-name={service}"
        self.description = f"kubernetes {policy.namespace}/{service}"

    async def watch(self, found: Found) -> None:
        policy = self._policy
        cluster = (
            from_kubeconfig(policy.kubeconfig)
            if policy.kubeconfig is not None
            else in_cluster(policy.service_account_dir)
        )
        client = registry_client(
            read_timeout=WATCH_SECONDS + 30,
            ca_file=cluster.ca_file,
            client_cert=cluster.client_cert,
        )
        async with client:
            while True:
                listed, slices = await self._list(client, cluster)
                found(self._endpoints(slices))
                version: str | None = listed
                while version is not None:
                    version = await self._watch_from(client, cluster, version, slices, found)
                log.info("%s: resource version expired (410 Gone); listing again", self.description)

    async def _list(
        self, client: httpx.AsyncClient, cluster: Cluster
    ) -> tuple[str, dict[str, dict[str, Any]]]:
        response = await client.get(
            cluster.server + self._path,
            params={"labelSelector": self._selector},
            headers=cluster.headers(),
        )
        answer = _answer(response, "list")
        slices = {_name(item): item for item in answer.get("items") or []}
        return str(answer.get("metadata", {}).get("resourceVersion", "")), slices

    async def _watch_from(
        self,
        client: httpx.AsyncClient,
        cluster: Cluster,
        version: str,
        slices: dict[str, dict[str, Any]],
        found: Found,
    ) -> str | None:
        """Apply one watch's events; the version to watch from next, None to list again."""
        params = {
            "labelSelector": self._selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async with client.stream(
            "GET", cluster.server + self._path, params=params, headers=cluster.headers()
        ) as response:
            if response.status_code == GONE:
                return None
            if response.status_code != 200:
                await response.aread()
                _answer(response, "watch")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json_object(line, "the API server")
                kind, item = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == GONE:
                        return None
                    raise DiscoveryError(f"watch error: {item.get('message', item)}")
                version = str(item.get("metadata", {}).get("resourceVersion", version))
                if kind in ("ADDED", "MODIFIED"):
                    slices[_name(item)] = item
                elif kind == "DELETED":
                    slices.pop(_name(item), None)
                else:
                    continue  # BOOKMARK: only the version moves on
                found(self._endpoints(slices))
        return version

    def _endpoints(self, slices: dict[str, dict[str, Any]]) -> list[Endpoint]:
        endpoints: dict[tuple[str, int], Endpoint] = {}
        for name, item in sorted(slices.items()):
            port = self._port_of(item, name)
            if port is None:
                continue
            for position, member in enumerate(item.get("endpoints") or []):
                if (member.get("conditions") or {}).get("ready") is False:
                    continue
                for address in member.get("addresses") or []:
                    endpoint = endpoint_at(
                        address,
                        port,
                        f"{self.description} slice {name} endpoint {position}",
                        zone=member.get("zone"),
                        metadata={"slice": name, "node": str(member.get("nodeName", ""))},
                    )
                    if endpoint is not None:
                        endpoints.setdefault((address, port), endpoint)
        return list(endpoints.values())

    def _port_of(self, item: dict[str, Any], name: str) -> int | None:
        wanted = self._policy.port
        ports = item.get("ports") or []
        for port in ports:
            number = port.get("port")
            chosen = len(ports) == 1 if wanted is None else wanted in (port.get("name"), number)
            if chosen and isinstance(number, int):
                return number
        log.error("discovery: %s slice %s skipped: no port %s", self.description, name, wanted)
        return None


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        message = response.text[:200]
        raise DiscoveryError(
            f"the API server answered the {what} {response.status_code}: {message}"
        )
    return json_object(response.text, "the API server")


def _name(item: dict[str, Any]) -> str:
    return str(item.get("metadata", {}).get("name", ""))


def source(policy: KubernetesDiscovery, upstream: str) -> KubernetesSource:
    """The backend's source (see ``discovery.backends.make_source``)."""
    return KubernetesSource(policy, upstream)
