from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.policy.models import Endpoint, Route, StaticDiscovery, UpstreamPolicy, UpstreamSection
from meshnode.policy.units import Address
from meshnode.proxy.routing import RouteTable, authority_host


def upstream(name: str, *routes: Route) -> UpstreamPolicy:
    return UpstreamPolicy(
        UpstreamSection(name),
        StaticDiscovery(endpoints=(Endpoint(Address("127.0.0.1", 1)),)),
        routes=routes,
    )


TABLE = RouteTable.build(
    {
        "api": upstream("api"),
        "payments": upstream("payments", Route(path_prefix="/pay/")),
        "payments-v2": upstream(
            "payments-v2", Route(path_prefix="/pay/", headers={"X-Version": "2"})
        ),
        "legacy": upstream("legacy", Route(authority="api", path_prefix="/old/")),
        "catch-all": upstream("catch-all", Route(authority="www.example")),
    }
)


@pytest.mark.parametrize(
    ("host", "path", "headers", "expected"),
    [
        (b"api", b"/users", [], "api"),
        (b"other", b"/pay/1", [], "payments"),
        (b"other", b"/pay/1", [(b"x-version", b"2")], "payments-v2"),
        (b"other", b"/pay/1", [(b"x-version", b"3")], "payments"),
        (b"api", b"/old/thing", [], "legacy"),
        (b"api", b"/older", [], "api"),
        (b"www.example", b"/anything", [], "catch-all"),
        (b"nowhere", b"/", [], None),
        (b"api", b"/pay/x", [], "payments"),
    ],
)
def test_resolve(host: bytes, path: bytes, headers: list, expected: str | None) -> None:
    assert TABLE.resolve(host, path, headers) == expected


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"api", b"api"),
        (b"API:8080", b"api"),
        (b"[::1]:15001", b"::1"),
        (b"[::1]", b"::1"),
        (b"api.mesh.local:443", b"api.mesh.local"),
        (b"host:notaport", b"host:notaport"),
    ],
)
def test_authority_host(authority: bytes, host: bytes) -> None:
    assert authority_host(authority) == host


@given(st.from_regex(rb"\A[a-z0-9.-]{1,30}\Z"), st.integers(0, 65535))
def test_any_port_is_dropped(host: bytes, port: int) -> None:
    assert authority_host(host + b":" + str(port).encode()) == host
