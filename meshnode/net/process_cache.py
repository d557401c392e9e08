"""The process-wide caches of header work: HPACK encodings, decoded Huffman strings,
fields found valid. A proxy sees the same few fields all day, so each is shared by every
connection of the process; each is bounded, and emptied whole when full (it fills again
with what is in use at once, and a hit costs one dict lookup, no recency bookkeeping).
No credential enters one (``net/credentials.py``): the callers leave them out.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Key = TypeVar("Key")
Value = TypeVar("Value")


class ProcessCache(dict[Key, Value], Generic[Key, Value]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Key, value: Value) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
