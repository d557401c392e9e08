"""Endpoint pickers (sans-IO): given the endpoints in force, choose one per request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Each endpoint in turn. Keeps its position when the endpoint list is replaced."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[T]) -> T | None:
        if not endpoints:
            return None
        index = self._next % len(endpoints)
        self._next = index + 1
        return endpoints[index]
