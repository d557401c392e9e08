"""Timeouts and fallbacks around one call, and calling what the user gave.

Everywhere the library takes a callable (the call itself, a fallback, a predicate, a
callback, a health check), a plain function and a coroutine function are both fine, as
in the seed, where any of them may return a value or a promise.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from meshnode.resilience.durations import DurationLike, seconds

T = TypeVar("T")

MaybeAsync = Callable[..., Awaitable[T] | T]


async def invoke(fn: MaybeAsync[T], *args: Any) -> T:
    """``fn(*args)``, awaited if it gave an awaitable."""
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


async def with_timeout(timeout: DurationLike, fn: MaybeAsync[T]) -> T:
    """``fn()``, or ``trio.TooSlowError`` after ``timeout``."""
    with trio.fail_after(seconds(timeout, "timeout")):
        return await invoke(fn)


async def with_fallback(
    fn: MaybeAsync[T],
    fallback: MaybeAsync[T],
    *,
    on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """``fn()``, or ``fallback()`` when it raises one of ``on``."""
    try:
        return await invoke(fn)
    except on:
        return await invoke(fallback)
