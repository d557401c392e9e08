"""A real gRPC server (grpcio's own, C-core: no h2 of meshnode's) on 127.0.0.1, for as long
as a ``with`` block lasts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc


@contextmanager
def grpc_server(
    service: str,
    methods: Mapping[str, grpc.RpcMethodHandler],
    *,
    options: Sequence[tuple[str, Any]] = (),
    workers: int = 4,
) -> Iterator[str]:
    """``service``'s ``methods`` (name -> handler) served; yields "127.0.0.1:PORT"."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def unary(handler: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(handler)
