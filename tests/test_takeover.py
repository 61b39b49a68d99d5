"""A standby that takes over a virtual IP (tunnel/resume.py `take_over`), in memory, on a fake clock.

Two gateways with one key bind the same address (the VIP, 192.0.2.2); the in-memory network
delivers it to whichever holds it now, as ARP does after keepalived's gratuitous ARP. A stock
client keeps sealing with the session of the gateway it talked to: the new holder cannot open
that, so without a handshake of its own the client is cut off until its timers give up (~15 s).
The namespace test with keepalived and wireguard-go is tests/integration/test_ha_e2e.py.
"""

from __future__ import annotations

import pytest

from tunnel.dataplane.fakes import MemoryNet
from tunnel.protocol.constants import MESSAGE_HANDSHAKE_INITIATION
from tunnel.resume import initiate, take_over

from .helpers.packets import ipv4_packet
from .helpers.planes import Clock, PlanePair, Side


class VipGateways(PlanePair):
    def __init__(self, seed=0):
        self.net = MemoryNet()
        self.clock = Clock()
        self.client = Side("client", 1, self.net, self.clock, seed)
        self.gw1 = Side("gw", 2, self.net, self.clock, seed)  # the same name and address: one key, one VIP
        self.gw2 = Side("gw", 2, self.net, self.clock, seed)
        self.vip = self.gw1.endpoint
        self.peer = self.client.device.add_peer(self.gw1.device.public_key, allowed_ips=["10.0.0.2/32"],
                                                endpoint=self.vip, name="vpn")
        for gw in (self.gw1, self.gw2):
            gw.device.add_peer(self.client.device.public_key, allowed_ips=["10.0.0.1/32"], name="client")

    @property
    def sides(self):
        return (self.client, self.gw1, self.gw2)

    def move_vip(self, to: Side) -> None:
        self.net.binds[self.vip] = to.bind

    def ping(self) -> None:
        self.client.tun.inject_plain(ipv4_packet("10.0.0.1", "10.0.0.2", b"ping"))
        self.settle()

    def take_over(self, gw: Side) -> int:
        """What server/ha does on MASTER: the registry's record of where the client was, paced (one batch)."""
        targets = [(self.client.device.public_key, self.client.endpoint)]
        started = take_over(gw.device, gw.plane.perform, targets, self.clock.now, self.clock.now)
        self.settle()
        return started


@pytest.fixture
def gws():
    g = VipGateways(seed=11)
    yield g
    g.close()


def test_the_new_holder_handshakes_and_the_client_resumes_at_once(gws):
    gws.move_vip(gws.gw2)
    gws.ping()
    assert gws.gw2.packets() == [ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")]

    gws.move_vip(gws.gw1)  # gw2 is gone; gw1 has never seen the client
    gws.advance(1)
    gws.ping()
    assert gws.gw1.packets() == [] and gws.gw1.counters.drops["unknown_receiver"] >= 1
    assert gws.take_over(gws.gw1) == 1
    gws.ping()
    assert gws.gw1.packets() == [ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")]

    # Back to gw2, which still holds its old session: `initiate` (a restart's resumption) would skip
    # the client, and the client's packets, sealed with gw1's session, stay lost.
    gws.advance(5)
    gws.move_vip(gws.gw2)
    gws.ping()
    assert gws.gw2.packets() == []
    assert gws.gw2.peer_of(gws.client).current is not None
    assert initiate(gws.gw2.device, gws.gw2.plane.perform, [(gws.client.device.public_key, None)],
                    gws.clock.now) == 0
    assert gws.take_over(gws.gw2) == 1
    gws.ping()
    assert gws.gw2.packets() == [ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")]
    assert gws.client.packets() == [] and gws.peer.endpoint == gws.vip


def test_a_peer_that_came_by_itself_since_the_takeover_is_left_alone(gws):
    gws.move_vip(gws.gw1)
    gws.ping()
    assert gws.gw1.packets()
    since = gws.clock.now - 1  # the takeover was a second ago; the client's handshake came after it
    gws.gw1.bind.sent.clear()
    targets = [(gws.client.device.public_key, gws.client.endpoint), (b"\x01" * 32, ("192.0.2.9", 9))]
    assert take_over(gws.gw1.device, gws.gw1.plane.perform, targets, since, gws.clock.now) == 0
    assert not [d for _, d in gws.gw1.bind.sent if d[0] == MESSAGE_HANDSHAKE_INITIATION]
