"""One supervised actor group per upstream: discovery, health prober, breaker, balancer."""
