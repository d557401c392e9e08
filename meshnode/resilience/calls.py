"""Timeouts and fallbacks around one call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


async def with_timeout(seconds: float, fn: Callable[[], Awaitable[T]]) -> T:
    """``fn()``, or ``trio.TooSlowError`` after ``seconds``."""
    with trio.fail_after(seconds):
        return await fn()


async def with_fallback(
    fn: Callable[[], Awaitable[T]],
    fallback: Callable[[], Awaitable[T]],
    *,
    on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """``fn()``, or ``fallback()`` when it raises one of ``on``."""
    try:
        return await fn()
    except on:
        return await fallback()
