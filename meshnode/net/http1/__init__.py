"""HTTP/1.1: caller and upstream connections on h11, and their translation to and from
the HTTP/2 request path."""
