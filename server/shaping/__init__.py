"""Bandwidth limits per client on the server's tunnel interface, enforced by the kernel (tc).

Download (toward a client) is shaped by HTB on the tunnel device's egress;
upload (from a client) by HTB on the egress of an ifb device that the
tunnel device's ingress redirects to. Both classify with a u32 hash on the
client's tunnel address, so the cost per packet does not grow with the
number of clients. See shaper.py for the API and the rules it keeps, and
plan.py for the layout and how burst, quantum and queue are chosen.
"""

from .ifb import ifb_name
from .shaper import ClientLimit, Shaper
from .tc import ShapingError

__all__ = ["ClientLimit", "Shaper", "ShapingError", "ifb_name"]
