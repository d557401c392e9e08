"""Fault injection decisions (pure): abort or delay a share of calls, chosen at random."""

from __future__ import annotations

import random

import attrs


@attrs.frozen
class FaultPlan:
    abort_percent: float = 0.0
    abort_status: int = 503
    delay_percent: float = 0.0
    delay: float = 0.0


@attrs.frozen
class Fault:
    delay: float = 0.0
    abort_status: int | None = None


NO_FAULT = Fault()


def decide(plan: FaultPlan, rng: random.Random) -> Fault:
    """Delay and abort are drawn independently; a delayed call may still be aborted."""
    delay = plan.delay if plan.delay_percent and rng.random() * 100 < plan.delay_percent else 0.0
    abort = plan.abort_percent and rng.random() * 100 < plan.abort_percent
    if not delay and not abort:
        return NO_FAULT
    return Fault(delay, plan.abort_status if abort else None)
