"""meshnode: a standalone service mesh node for bare metal and VMs, on Trio."""

__version__ = "0.1.0"
