"""What the fuzz targets share: one connection's server session fed the input as a peer
would send it, under a virtual clock, and the atheris entry point with seed inputs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import atheris
import trio
import trio.testing


class Session(Protocol):
    async def run(self) -> Any: ...


# Makes the session for one connection: its transport, and where each request stream goes.
SessionFactory = Callable[[trio.abc.Stream, Callable[[Any], None]], Session]


def runner(
    make_session: SessionFactory, answer: Callable[[Any], Awaitable[None]], prefix: bytes = b""
) -> Callable[[bytes], None]:
    """The test function for atheris: a fresh session per input, ``prefix`` + input sent,
    then the peer's side closed; it must end without an exception out of the session."""

    async def exercise(data: bytes) -> None:
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            session = make_session(server, lambda stream: nursery.start_soon(answer, stream))
            nursery.start_soon(session.run)
            await client.send_all(prefix + data)
            await client.send_stream.aclose()
            with trio.fail_after(3600):  # virtual time: every timeout of the session fires first
                while await client.receive_some(65536):
                    pass
            nursery.cancel_scope.cancel()

    def test_one_input(data: bytes) -> None:
        trio.run(exercise, data, clock=trio.testing.MockClock(autojump_threshold=0))

    return test_one_input


def main(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    """``fuzz/<target>.py CORPUS [libFuzzer options]``: the seeds go into CORPUS first;
    ``fuzz/<target>.py crash-<hash>`` replays one input."""
    logging.disable(logging.CRITICAL)  # every violation logs a line: millions here
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
    if corpus is not None and not corpus.is_file():  # a file given is an input to replay
        corpus.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(seeds):
            (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
