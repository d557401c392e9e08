"""What a mesh call gives back: the whole response, or one to read as it arrives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx

from meshnode.net.stream import Data, EndOfStream, Headers, Stream, StreamReset, Trailers


class MeshClientError(Exception):
    """A call that produced no (complete) response."""


class MeshUnavailable(MeshClientError):
    """Sidecar mode: the local meshnode could not be reached."""


class CallReset(MeshClientError):
    """The response was cut short: the stream was reset before its end (never truncated
    silently: a partial body is not a response)."""


class MeshStatusError(MeshClientError):
    """``raise_for_status`` on a 4xx or 5xx answer."""

    def __init__(self, response: MeshResponse) -> None:
        reason = f" ({response.mesh_error})" if response.mesh_error else ""
        super().__init__(f"{response.status}{reason} from {response.service}")
        self.response = response


def _as_headers(raw: Headers) -> httpx.Headers:
    return httpx.Headers([(n, v) for n, v in raw if not n.startswith(b":")], encoding="latin-1")


def _header(headers: httpx.Headers, name: str) -> str | None:
    value: str | None = headers.get(name)
    return value


def _status_of(raw: Headers) -> int:
    for name, value in raw:
        if name == b":status":
            return int(value)
    return 0


@attrs.frozen
class MeshResponse:
    """A complete response. ``mesh_error`` is the reason when the mesh made the answer itself
    (``circuit-open``, ``timeout``... SPEC section 5), ``fallback`` the fallback's kind when
    a fallback answered."""

    service: str
    status: int
    headers: httpx.Headers
    body: bytes
    trailers: httpx.Headers | None = None

    @property
    def mesh_error(self) -> str | None:
        return _header(self.headers, "x-meshnode-error")

    @property
    def fallback(self) -> str | None:
        return _header(self.headers, "x-meshnode-fallback")

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> MeshResponse:
        if self.status >= 400:
            raise MeshStatusError(self)
        return self


class StreamingResponse:
    """A response whose body is read as it arrives (``iter_bytes``); the data is acknowledged
    as it is taken, so a caller that stops reading stops the upstream (flow control)."""

    def __init__(self, service: str, head: Headers, stream: Stream) -> None:
        self.service = service
        self.status = _status_of(head)
        self.headers = _as_headers(head)
        self.trailers: httpx.Headers | None = None
        self._stream = stream
        self._consumed = stream.consume_end()

    @property
    def mesh_error(self) -> str | None:
        return _header(self.headers, "x-meshnode-error")

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        stream = self._stream
        while not self._consumed:
            try:
                item = await stream.receive()
            except StreamReset as reset:
                raise CallReset(
                    f"the response from {self.service} was cut short: {reset}"
                ) from None
            if type(item) is Data:
                stream.ack(item.flow_length)
                if item.data:
                    yield item.data
            elif type(item) is Trailers:
                self.trailers = _as_headers(item.headers)
                self._consumed = True
            elif type(item) is EndOfStream:
                self._consumed = True

    async def read(self) -> MeshResponse:
        """The rest of the body, as a complete response."""
        body = b"".join([chunk async for chunk in self.iter_bytes()])
        return MeshResponse(self.service, self.status, self.headers, body, self.trailers)
