"""The retry rules read from a response head: its status first, then a gRPC status in
the head (a trailers-only answer), read only when the policy names one."""

from __future__ import annotations

import pytest

from meshnode.proxy.retry import head_condition

GRPC_UNAVAILABLE = [(b":status", b"200"), (b"grpc-status", b"14")]


@pytest.mark.parametrize(
    ("status", "headers", "retry_on", "expected"),
    [
        (503, [(b":status", b"503")], ("reset", "503"), "503"),
        (200, GRPC_UNAVAILABLE, ("503", "unavailable"), "unavailable"),
        (200, GRPC_UNAVAILABLE, ("503", "resource-exhausted"), None),
        (200, GRPC_UNAVAILABLE, ("503",), None),
        (503, [(b":status", b"503"), (b"grpc-status", b"14")], ("503", "unavailable"), "503"),
        (200, [(b":status", b"200"), (b"grpc-status", b"x")], ("unavailable",), None),
    ],
)
def test_the_condition_a_head_matches(status, headers, retry_on, expected) -> None:
    assert head_condition(status, headers, retry_on) == expected
    assert head_condition(status, headers, retry_on) == expected  # the policy's list, known
