"""gRPC through meshnode: grpcio on both ends, status read from the trailers."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import trio

from tests.conftest import upstream_toml, write_policies
from tests.support.grpc_server import grpc_server, unary

MAX_MESSAGE = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def _reverse(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request[::-1]


def _count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for index in range(int(request)):
        yield f"message {index}".encode()


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort raises")


@pytest.fixture
def grpc_upstream() -> Iterator[str]:
    methods = {
        "Reverse": unary(_reverse),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
        "Fail": unary(_fail),
    }
    with grpc_server("test.Echo", methods, options=OPTIONS) as address:
        yield address


@pytest.fixture
async def channel(tmp_path, start_node, grpc_upstream) -> Iterator[grpc.Channel]:
    node = await start_node(
        write_policies(tmp_path, {"echo": upstream_toml("echo", grpc_upstream)})
    )
    with grpc.insecure_channel(
        str(node.outbound[0]), options=[*OPTIONS, ("grpc.default_authority", "echo")]
    ) as channel:
        yield channel


async def test_unary_call(channel: grpc.Channel) -> None:
    reverse = channel.unary_unary("/test.Echo/Reverse")
    reply = await trio.to_thread.run_sync(lambda: reverse(b"meshnode", timeout=10))
    assert reply == b"edonhsem"


async def test_unary_call_with_a_ten_mebibyte_message(channel: grpc.Channel) -> None:
    reverse = channel.unary_unary("/test.Echo/Reverse")
    message = bytes(range(256)) * (10 * 4096 + 1)
    reply = await trio.to_thread.run_sync(lambda: reverse(message, timeout=30))
    assert reply == message[::-1]


async def test_server_streaming_call(channel: grpc.Channel) -> None:
    count = channel.unary_stream("/test.Echo/Count")
    replies = await trio.to_thread.run_sync(lambda: list(count(b"50", timeout=10)))
    assert replies == [f"message {index}".encode() for index in range(50)]


async def test_error_status_arrives_from_trailers(channel: grpc.Channel) -> None:
    fail = channel.unary_unary("/test.Echo/Fail")

    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            fail(b"x", timeout=10)
        return caught.value

    error = await trio.to_thread.run_sync(call)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing"
