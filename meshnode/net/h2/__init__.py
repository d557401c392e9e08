"""HTTP/2: the session over any trio stream, the frame gate in front of h2, h2 made
faster, HPACK coders, and request validation."""
