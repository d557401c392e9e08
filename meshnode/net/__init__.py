"""Trio I/O for HTTP/2: sessions over any trio stream, and pooled upstream connections."""
