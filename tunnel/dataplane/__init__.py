"""The data plane: the batched loop between a TUN device and UDP (see loop.py).

    loop.py     the epoll loop, the handshake queue, the core's actions
    send.py     TUN -> UDP: super-packets sealed into GSO trains
    receive.py  UDP -> TUN: GRO trains opened, TCP segments merged
    io.py       the two I/O seams (TunDevice, Bind)
    fakes.py    in-memory TUN and UDP, for tests and benchmarks without root
    drops.py    the data plane's own drop reasons
"""

from ..protocol.counters import Counters
from .loop import DataPlane, format_endpoint, log_event, peer_name

# The interface's counters; the name the services have always used.
Stats = Counters

__all__ = ["DataPlane", "Counters", "Stats", "format_endpoint", "log_event", "peer_name"]
