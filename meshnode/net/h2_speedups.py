"""A bounded cost for a debug string h2 builds for every frame it receives.

h2's ``_receive_frame`` calls ``logger.trace("Received frame: %s", repr(frame))``
whatever the logger, and hyperframe's repr of a frame hexlifies its *whole*
body before keeping the first 20 hex digits: a 16 KiB DATA frame costs a
32 KiB string for nothing. Measured with py-spy on 1 MiB uploads, that was a
tenth of meshnode's CPU. ``_raw_data_repr`` is replaced by one that hexlifies
only the 10 bytes it shows, so every repr is exactly what it was.

Every frame also gets a ``Flags`` whose ``__init__`` builds the set of its
class's valid flag names anew: that set is built once per frame class here.
Each stands in for hyperframe's own, with the same results.

h2's ``Settings`` keeps each setting as a deque (the current value, then
values sent and not yet acknowledged): two ``Settings`` per connection, a
dozen deques of 760 bytes each, a quarter of an idle connection's memory.
``SettingValues`` is the part of a deque h2 uses, on a list (about 80 bytes).
"""

from __future__ import annotations

import binascii
import types
from collections.abc import Iterable

import h2.settings
import hyperframe.flags
import hyperframe.frame

SHOWN = 10  # bytes: hyperframe shows 20 hex digits


def short_raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[: SHOWN + 1]).decode("ascii")
    if len(shown) > 2 * SHOWN:
        shown = shown[: 2 * SHOWN] + "..."
    return "<hex:" + shown + ">"


_flag_names: dict[int, tuple[object, frozenset[str]]] = {}
_build_flags = hyperframe.flags.Flags.__init__


def flags_init(
    self: hyperframe.flags.Flags, defined_flags: Iterable[hyperframe.flags.Flag]
) -> None:
    """``Flags.__init__``, the valid names kept per frame class's list of defined flags."""
    if type(defined_flags) is not list:
        _build_flags(self, defined_flags)
        return
    known = _flag_names.get(id(defined_flags))
    if known is None or known[0] is not defined_flags:  # the list held: its id stays its own
        known = (defined_flags, frozenset(flag.name for flag in defined_flags))
        _flag_names[id(defined_flags)] = known
    self._valid_flags = known[1]  # type: ignore[assignment]
    self._flags = set()


class SettingValues(list[int]):
    def popleft(self) -> int:
        return self.pop(0)


hyperframe.frame._raw_data_repr = short_raw_data_repr
hyperframe.flags.Flags.__init__ = flags_init  # type: ignore[method-assign]
h2.settings.collections = types.SimpleNamespace(deque=SettingValues)  # type: ignore[attr-defined,assignment]
