"""Which upstream serves a request: pure, built once per policy set.

Explicit ``[[routes]]`` are tried first, most specific first (those naming an
authority, then longer path prefixes, then more header conditions); a request
that no route claims goes to the upstream whose name is its ``:authority`` host
(port dropped). Everything is compared as bytes, as it arrives from the codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from meshnode.policy.models import UpstreamPolicy

Headers = Sequence[tuple[bytes, bytes]]


@attrs.frozen
class _Rule:
    upstream: str
    authority: bytes | None
    path_prefix: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def matches(self, host: bytes, path: bytes, headers: Headers) -> bool:
        if self.authority is not None and host != self.authority:
            return False
        if not path.startswith(self.path_prefix):
            return False
        return all((name, value) in headers for name, value in self.headers)


@attrs.frozen
class RouteTable:
    names: frozenset[bytes]
    rules: tuple[_Rule, ...]

    @classmethod
    def build(cls, upstreams: Mapping[str, UpstreamPolicy]) -> RouteTable:
        rules = [
            _Rule(
                upstream=name,
                authority=route.authority.lower().encode() if route.authority else None,
                path_prefix=route.path_prefix.encode(),
                headers=tuple(
                    (key.lower().encode(), value.encode()) for key, value in route.headers.items()
                ),
            )
            for name, policy in upstreams.items()
            for route in policy.routes
        ]
        rules.sort(key=lambda r: (r.authority is None, -len(r.path_prefix), -len(r.headers)))
        return cls(frozenset(name.encode() for name in upstreams), tuple(rules))

    def resolve(self, host: bytes, path: bytes, headers: Headers) -> str | None:
        for rule in self.rules:
            if rule.matches(host, path, headers):
                return rule.upstream
        if host in self.names:
            return host.decode()
        return None


def authority_host(authority: bytes) -> bytes:
    """The host part of an authority, lower-cased: "Api:8080" -> b"api", "[::1]:80" -> b"::1"."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[1:end].lower() if end > 0 else authority.lower()
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host.lower()
    return authority.lower()
