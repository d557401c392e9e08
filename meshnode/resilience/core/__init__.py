"""Sans-IO decision cores: time is passed in, randomness injected, nothing awaits.

The node's request path and the public library wrappers drive the same cores.
"""
