"""Public resilience library: sans-IO cores that the node and any Trio program share."""

from meshnode.resilience.balancer import RoundRobin as RoundRobin
