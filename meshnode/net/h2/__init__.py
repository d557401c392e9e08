"""HTTP/2: the session over any trio stream, the frame gate, meshnode's own codec, HPACK
coders, and request validation."""
