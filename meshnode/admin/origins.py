"""Who may talk to the admin plane from a browser (pure): the defence against web pages.

A page open in an operator's browser can send requests to the admin listener on
loopback. Three rules keep it out (docs/security.md has the threat model):

- DNS rebinding: a page on ``rebind.example`` whose name is made to resolve to
  127.0.0.1 reads the admin API as its own origin. Its requests say ``Host:
  rebind.example``: a request whose host is a name, and neither ``localhost`` nor
  one of ``[admin] allowed_hosts``, is refused (421). An address (``127.0.0.1``,
  ``[::1]``, ``10.0.0.5``) cannot be rebound, so it always passes.
- Cross-site requests: a form or ``fetch`` from another site can POST without
  asking first, but never with a custom header or a JSON body: a mutating request
  must carry ``x-meshnode-admin`` (or ``content-type: application/json``), and one
  whose ``Origin`` is another origin than the listener's own is refused (403).
- WebSockets are never subject to the same-origin policy: an event stream opened
  from another origin is refused (403).

Clients that are not browsers (the CLI, curl, Prometheus) send no ``Origin``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping, Set

from meshnode.policy.models import AdminSection

ADMIN_HEADER = "x-meshnode-admin"


def allowed_hosts(admin: AdminSection) -> frozenset[str]:
    """``[admin] allowed_hosts``, lower-cased."""
    return frozenset(name.lower() for name in admin.allowed_hosts)


def host_problem(headers: Mapping[str, str], allowed: Set[str]) -> str | None:
    """Why the request's ``Host`` is not one this listener answers to, or None."""
    host = headers.get("host")
    if host is None:
        return None  # HTTP/1.0 without a host: no browser sends that
    name = _hostname(host)
    if name is None:
        return f"host {host!r} is unreadable"
    if _is_address(name) or name == "localhost":
        return None
    if name.endswith(".localhost") or name in allowed:
        return None
    return f"host {name!r} is not this admin listener's (add it to [admin] allowed_hosts)"


def change_problem(headers: Mapping[str, str]) -> str | None:
    """Why a mutating request may not come from where it comes from, or None."""
    problem = origin_problem(headers)
    if problem is not None:
        return problem
    json_body = headers.get("content-type", "").lower().startswith("application/json")
    if ADMIN_HEADER not in headers and not json_body:
        return f"admin changes need the {ADMIN_HEADER} header (or a JSON body)"
    return None


def origin_problem(headers: Mapping[str, str]) -> str | None:
    """Why the request's ``Origin`` (a browser's) is foreign to this listener, or None."""
    origin = headers.get("origin")
    if origin is None:
        return None
    given = urllib.parse.urlsplit(origin).netloc.lower()
    if given and given == headers.get("host", "").lower():
        return None
    return f"requests from {origin!r} are not allowed here"


def _hostname(host: str) -> str | None:
    """The host of a ``Host`` value, without its port, lower-cased; None if unreadable."""
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname
    except ValueError:
        return None
    return name.lower() if name else None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
