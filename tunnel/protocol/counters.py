"""The counters of one interface, shared by the protocol core and the data plane.

The core counts what it decides (transport packets and bytes, cookie replies,
every protocol drop under its reason); the data plane counts its I/O (system
calls, queue depth, I/O drops). Both write into the one Counters object the
caller hands them, so show, metrics and the drop log read a single place.
Plain attributes: the owner of the loop writes, other threads only read.
"""

from __future__ import annotations

import collections


class Counters:
    __slots__ = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "drops", "handshakes_queued_max",
                 "cookie_replies", "tun_writes", "udp_sends", "endpoint_switches")

    def __init__(self) -> None:
        self.rx_packets = self.tx_packets = self.rx_bytes = self.tx_bytes = 0
        self.handshakes_queued_max = self.cookie_replies = self.tun_writes = self.udp_sends = 0
        self.endpoint_switches = 0  # a peer moved to another of its endpoints (tunnel/failover.py)
        self.drops: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return (f"Counters(rx={self.rx_packets}, tx={self.tx_packets}, "
                f"drops={sum(self.drops.values())})")
