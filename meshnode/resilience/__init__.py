"""meshnode's resilience library: the seed's patterns for any Trio program.

The node runs the same sans-IO cores (``meshnode.resilience.core``) in its
request path; these are their thin Trio wrappers. See docs/resilience.md.
``ServiceDiscovery`` lives with the discovery backends it runs on, a layer above this
package (``meshnode.discovery``, docs/discovery.md); SPEC section 9 names it here too,
so ``meshnode.resilience.ServiceDiscovery`` resolves to it on first use, and importing
this package never imports discovery.
"""

import importlib
from typing import Any

from meshnode.resilience.adaptive import AdaptiveLimiter as AdaptiveLimiter
from meshnode.resilience.adaptive import LimitExceededError as LimitExceededError
from meshnode.resilience.balancer import Instance as Instance
from meshnode.resilience.balancer import LoadBalancer as LoadBalancer
from meshnode.resilience.bulkhead import Bulkhead as Bulkhead
from meshnode.resilience.bulkhead import BulkheadFullError as BulkheadFullError
from meshnode.resilience.calls import with_fallback as with_fallback
from meshnode.resilience.calls import with_timeout as with_timeout
from meshnode.resilience.circuit_breaker import BreakerMetrics as BreakerMetrics
from meshnode.resilience.circuit_breaker import CircuitBreaker as CircuitBreaker
from meshnode.resilience.circuit_breaker import CircuitOpenError as CircuitOpenError
from meshnode.resilience.circuit_breaker import StateChange as StateChange
from meshnode.resilience.faults import FaultInjector as FaultInjector
from meshnode.resilience.faults import InjectedFaultError as InjectedFaultError
from meshnode.resilience.health import CheckOutcome as CheckOutcome
from meshnode.resilience.health import CommonHealthChecks as CommonHealthChecks
from meshnode.resilience.health import HealthCheck as HealthCheck
from meshnode.resilience.health import HealthCheckManager as HealthCheckManager
from meshnode.resilience.health import HealthReport as HealthReport
from meshnode.resilience.limits import RateLimitedError as RateLimitedError
from meshnode.resilience.limits import TokenBucket as TokenBucket
from meshnode.resilience.retrying import Retry as Retry
from meshnode.resilience.retrying import RetryMetrics as RetryMetrics
from meshnode.resilience.retrying import RetryPresets as RetryPresets
from meshnode.resilience.retrying import retry as retry
from meshnode.resilience.spool import AsyncSpool as AsyncSpool
from meshnode.resilience.spool import Spool as Spool
from meshnode.resilience.spool import SpoolError as SpoolError
from meshnode.resilience.spool import SpoolFull as SpoolFull


def __getattr__(name: str) -> Any:
    if name in ("ServiceDiscovery", "ServiceChange"):
        return getattr(importlib.import_module("meshnode.discovery"), name)
    raise AttributeError(f"module 'meshnode.resilience' has no attribute {name!r}")
