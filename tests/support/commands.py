"""Running the ``meshnode`` command as a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def meshnode(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    wrapper: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``wrapper`` runs it (``ip netns exec NS``, on a host of the tests')."""
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "meshnode", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=check,
        env=env,
    )
