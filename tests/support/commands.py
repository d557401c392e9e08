"""Running the ``meshnode`` command as a user would."""

from __future__ import annotations

import subprocess
import sys


def meshnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
