"""Request and error rates over the last minutes, per upstream, for the status page's
sparklines: cumulative counters sampled every ``SAMPLE_INTERVAL`` seconds, kept for
``SAMPLES`` samples (five minutes), turned into per-second rates on demand."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping

from meshnode.actors.stats import UpstreamStats

SAMPLE_INTERVAL = 5.0
SAMPLES = 61  # sixty intervals


class RateHistory:
    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}

    def sample(self, stats: Mapping[str, UpstreamStats], now: float) -> None:
        """Record every upstream's totals; upstreams that are gone are forgotten."""
        for name in list(self._samples):
            if name not in stats:
                del self._samples[name]
        for name, counts in stats.items():
            requests = sum(counts.requests.values())
            errors = sum(n for code, n in counts.requests.items() if code >= 500 or code == 0)
            self._samples.setdefault(name, deque(maxlen=SAMPLES)).append((now, requests, errors))

    def rates(self, name: str) -> dict[str, list[float]]:
        """Requests and errors (5xx and resets) per second in each interval, oldest first."""
        samples = list(self._samples.get(name, ()))
        requests: list[float] = []
        errors: list[float] = []
        for earlier, later in itertools.pairwise(samples):
            (then, requests_then, errors_then), (now, requests_now, errors_now) = earlier, later
            seconds = max(now - then, 1e-9)
            requests.append(round((requests_now - requests_then) / seconds, 3))
            errors.append(round((errors_now - errors_then) / seconds, 3))
        return {"requests": requests, "errors": errors}
