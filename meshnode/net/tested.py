"""Whether an installed library is a version meshnode's code that reaches into its
internals was tested with (trio's runner, for busy polling): compared by
minor version, so patch releases pass and anything newer or older falls back."""

from __future__ import annotations

from importlib.metadata import version

Span = tuple[str, str]  # the oldest and newest minor versions tested, "4.1" and "4.4"


def untested(package: str, span: Span, installed: str | None = None) -> str | None:
    """ "trio 0.99.0 (tested 0.27 to 0.35)" when ``installed`` (default: what is installed) is
    outside ``span``; None when it was tested."""
    if installed is None:
        installed = version(package)
    oldest, newest = span
    if _minor(oldest) <= _minor(installed) <= _minor(newest):
        return None
    return f"{package} {installed} (tested {oldest} to {newest})"


def _minor(text: str) -> tuple[int, int]:
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
