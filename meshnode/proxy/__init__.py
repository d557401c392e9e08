"""The request path: routing (pure), header rules (pure), forwarding, mesh responses."""
