"""Service discovery: where an upstream's endpoints come from (SPEC section 4 ``[discovery]``).

Each backend is a ``Source`` whose ``watch`` reports whole endpoint sets as
the registry changes; ``keep_discovering`` runs one for ever, through registry
outages (last known endpoints kept, backoff, stale flag) and flapping
(debounced). The upstream's discovery watcher actor turns the sets into
``EndpointsReset`` for its balancer; ``ServiceDiscovery`` is the same for
library users (``from meshnode.discovery import ServiceDiscovery``).
"""

from meshnode.discovery.service import ServiceChange as ServiceChange
from meshnode.discovery.service import ServiceDiscovery as ServiceDiscovery
