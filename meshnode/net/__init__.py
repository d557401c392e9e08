"""Trio I/O for the node's connections: the stream vocabulary, HTTP/2 (h2/), HTTP/1.1
(http1/), and the transports (sockets, TLS, listeners, the upstream pool, in-process
exchanges)."""
