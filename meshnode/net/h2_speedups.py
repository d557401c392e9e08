"""A bounded cost for a debug string h2 builds for every frame it receives.

h2's ``_receive_frame`` calls ``logger.trace("Received frame: %s", repr(frame))``
whatever the logger, and hyperframe's repr of a frame hexlifies its *whole*
body before keeping the first 20 hex digits: a 16 KiB DATA frame costs a
32 KiB string for nothing. Measured with py-spy on 1 MiB uploads, that was a
tenth of meshnode's CPU. ``_raw_data_repr`` is replaced by one that hexlifies
only the 10 bytes it shows, so every repr is exactly what it was.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

SHOWN = 10  # bytes: hyperframe shows 20 hex digits


def short_raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[: SHOWN + 1]).decode("ascii")
    if len(shown) > 2 * SHOWN:
        shown = shown[: 2 * SHOWN] + "..."
    return "<hex:" + shown + ">"


hyperframe.frame._raw_data_repr = short_raw_data_repr
