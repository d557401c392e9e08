"""Run the Hypercorn test upstream in its own process; print its address, then each request."""

from __future__ import annotations

import functools

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support import upstream_app


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "warning"
    upstream_app.on_request = lambda path: print(f"request {path}", flush=True)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(functools.partial(serve, upstream_app.app, config))
        print(binds[0].removeprefix("http://"), flush=True)


if __name__ == "__main__":
    trio.run(main)
