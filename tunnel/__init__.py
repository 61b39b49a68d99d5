"""tunnel: a WireGuard-compatible VPN in Python (shared library of client and server)."""

__version__ = "0.1.0"
