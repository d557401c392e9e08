"""The admin listener: HTTP/1.1 (h11) for operators, Prometheus and the admin commands."""
