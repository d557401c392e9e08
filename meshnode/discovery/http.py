"""The HTTP client every registry backend uses (httpx on Trio): one place for TLS and
timeouts, so Consul, Kubernetes and etcd verify servers alike."""

from __future__ import annotations

import json
import ssl
from typing import Any

import httpx

from meshnode.discovery.source import DiscoveryError

CONNECT_TIMEOUT = 5.0


def registry_client(
    *,
    read_timeout: float,
    ca_file: str | None = None,
    client_cert: tuple[str, str] | None = None,
) -> httpx.AsyncClient:
    """A client that verifies https servers against ``ca_file`` (else the system's CAs)
    and, when given, presents ``client_cert`` (certificate file, key file)."""
    context = ssl.create_default_context(cafile=ca_file)
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(CONNECT_TIMEOUT, read=read_timeout), verify=context
    )


def json_object(text: str, registry: str) -> dict[str, Any]:
    """A registry's answer, which must be a JSON object; anything else is garbage."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DiscoveryError(f"{registry} answered something that is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DiscoveryError(f"{registry} answered JSON that is not an object")
    return value
