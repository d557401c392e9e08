"""Which fault ``[chaos]`` injects into one request: the policy's draw, or what the
request's fault headers ask for when ``header_faults`` is on."""

from __future__ import annotations

import random

from meshnode.errors import BadRequest
from meshnode.policy.models import ChaosPolicy
from meshnode.policy.units import Duration
from meshnode.proxy.headers import HeaderList
from meshnode.resilience.core.faults import NO_FAULT, Fault, FaultPlan, decide

# What x-meshnode-fault-abort and x-meshnode-fault-delay may ask for (a status a node may
# answer with: 1xx is no final answer; a delay no test needs longer).
FINAL_STATUSES = (200, 599)
MAX_HEADER_DELAY = 60.0


def fault_for(
    chaos: ChaosPolicy, plan: FaultPlan, rng: random.Random, headers: HeaderList
) -> Fault:
    """This request's fault: ``plan``'s draw (the upstream's, made from ``chaos`` as its
    policy loaded), or what the fault headers ask for. A header the node could not honour
    (a status that is no final answer, a delay that is no duration or over
    ``MAX_HEADER_DELAY``) is the caller's mistake, answered 400: relayed, an invalid status
    broke the caller's stream."""
    fault = decide(plan, rng)
    if not chaos.header_faults:
        return fault
    for name, value in headers:
        if name == b"x-meshnode-fault-abort":
            status = int(value) if value.isdigit() else 0
            if not FINAL_STATUSES[0] <= status <= FINAL_STATUSES[1]:
                raise BadRequest(
                    f"x-meshnode-fault-abort: {value.decode(errors='replace')!r} is not a "
                    f"status from {FINAL_STATUSES[0]} to {FINAL_STATUSES[1]}"
                )
            fault = Fault(fault.delay, status)
        elif name == b"x-meshnode-fault-delay":
            try:
                delay = Duration.parse(value.decode(errors="replace"))
            except ValueError:
                delay = None
            if delay is None or delay > MAX_HEADER_DELAY:
                raise BadRequest(
                    f"x-meshnode-fault-delay: {value.decode(errors='replace')!r} is not a "
                    f'duration up to {Duration(MAX_HEADER_DELAY)} (like "300ms")'
                )
            fault = Fault(delay, fault.abort_status)
    return fault if fault != NO_FAULT else NO_FAULT
