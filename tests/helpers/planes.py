"""Two DataPlanes wired together in memory (tunnel.dataplane.fakes), on a fake clock.

    pair = PlanePair()                 # a (10.0.0.1, fd00::1) <-> b (10.0.0.2, fd00::2)
    pair.a.tun.inject_plain(packet)    # what a's kernel would hand a's daemon
    pair.settle()                      # turn both loops until nothing is left to do
    pair.b.tun.take()                  # what b's daemon wrote to its TUN

Every random byte comes from generators seeded by the test; time moves only
when the test moves it (`advance` fires every timer on the way, as the loop
would). Nothing needs root.
"""

from __future__ import annotations

import random

from tunnel.dataplane import DataPlane
from tunnel.dataplane.fakes import MemoryBind, MemoryNet, MemoryTun
from tunnel.offload import VNET_HDR_LEN, segment
from tunnel.protocol import Device

WALL_EPOCH = 1_700_000_000.0


class Clock:
    """The fake monotonic clock, and a fake wall clock `wall_offset` seconds from WALL_EPOCH + now."""

    def __init__(self, now: float = 100.0):
        self.now = now
        self.wall_offset = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_EPOCH + self.now + self.wall_offset


class Side:
    """One end: its Device, MemoryTun, MemoryBind and DataPlane."""

    def __init__(self, name: str, index: int, net: MemoryNet, clock: Clock, seed, vnet: bool = True,
                 mtu: int = 1420, gro: bool = True, filter: bool = True, uso: bool = False):
        self.name = name
        rng = random.Random(f"{seed}-{name}").randbytes
        # As a daemon does: the wall clock sampled once at start (the loop keeps it current).
        self.device = Device(rng(32), wall_epoch=clock.wall() - clock.now, mtu=mtu, rng=rng)
        self.endpoint = (f"192.0.2.{index}", 51820)
        self.address4 = f"10.0.0.{index}"
        self.address6 = f"fd00::{index:x}"
        self.tun = MemoryTun(vnet_hdr=vnet, uso=uso)
        self.bind: MemoryBind = net.bind(*self.endpoint, gro=gro, filter=filter)
        self.events: list = []
        self.plane = DataPlane(self.device, self.tun, self.bind, clock=clock, wall_clock=clock.wall,
                               on_event=self.events.append)

    @property
    def counters(self):
        return self.device.counters

    def peer_of(self, other: "Side"):
        return self.device.peers[other.device.public_key]

    def pending(self) -> list[int]:
        """The descriptors the loop's epoll would report now."""
        ready = []
        if self.tun.inbox:
            ready.append(self.tun.fd)
        ready.extend(self.bind.ready_fds())
        return ready

    def packets(self) -> list[bytes]:
        """Every IP packet written to the TUN since the last call, super-packets split back."""
        out = []
        for data in self.tun.take():
            if self.tun.vnet_hdr:
                buf = bytearray(70000)
                out.extend(bytes(buf[s:s + n]) for s, n in segment(memoryview(data), 0, len(data), buf))
            else:
                out.append(data)
        return out

    def writes(self) -> list[bytes]:
        return self.tun.take()

    def close(self) -> None:
        self.plane.close()
        self.tun.close()
        self.bind.close()


class PlanePair:
    def __init__(self, seed=0, vnet: bool = True, mtu: int = 1420, gro: bool = True, psk: bytes | None = None,
                 endpoint_b: bool = False, keepalive_a: int = 0, filter: bool = True, uso: bool = False):
        self.net = MemoryNet()
        self.clock = Clock()
        self.a = Side("a", 1, self.net, self.clock, seed, vnet, mtu, gro, filter, uso)
        self.b = Side("b", 2, self.net, self.clock, seed, vnet, mtu, gro, filter, uso)
        a, b = self.a, self.b
        a.device.add_peer(b.device.public_key, preshared_key=psk,
                          allowed_ips=[f"{b.address4}/32", f"{b.address6}/128"], endpoint=b.endpoint,
                          persistent_keepalive=keepalive_a, name="b")
        b.device.add_peer(a.device.public_key, preshared_key=psk,
                          allowed_ips=[f"{a.address4}/32", f"{a.address6}/128"],
                          endpoint=a.endpoint if endpoint_b else None, name="a")

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.a, self.b

    def turn(self) -> bool:
        """One turn of each loop that has something to do; False when neither had."""
        busy = False
        for side in self.sides:
            ready = side.pending()
            if ready or side.plane.handshakes:
                busy = True
            side.plane.service(ready, self.clock.now)
        return busy

    def settle(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.turn():
                return
        raise AssertionError("the loops did not settle")

    def advance(self, seconds: float) -> None:
        """Move the clock, firing each timer at its own deadline on the way, as the loops would."""
        end = self.clock.now + seconds
        while True:
            deadlines = [d for d in (s.device.next_deadline() for s in self.sides) if d is not None]
            due = min(deadlines) if deadlines else None
            if due is None or due > end:
                break
            self.clock.now = max(self.clock.now, due)
            self.settle()
        self.clock.now = end
        self.settle()

    def close(self) -> None:
        for side in self.sides:
            side.close()


def vnet_plain(packet: bytes) -> bytes:
    """An IP packet behind an empty vnet header, as a TUN with IFF_VNET_HDR gives a plain packet."""
    return bytes(VNET_HDR_LEN) + packet
