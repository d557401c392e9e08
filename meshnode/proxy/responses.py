"""The responses the node makes itself (SPEC section 5)."""

from __future__ import annotations

import json

from meshnode.errors import MeshError
from meshnode.proxy.headers import HeaderList


def error_response(error: MeshError) -> tuple[HeaderList, bytes]:
    body = json.dumps(
        {"error": error.reason, "upstream": error.upstream, "detail": error.detail}
    ).encode()
    headers = [
        (b":status", str(error.status).encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-meshnode-error", error.reason.encode()),
    ]
    if error.request_id:
        headers.append((b"x-request-id", error.request_id))
    headers.extend(error.extra_headers())
    return headers, body
