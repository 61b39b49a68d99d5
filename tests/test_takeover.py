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
        self.more: list[Side] = []  # other clients a test adds

    @property
    def sides(self):
        return (self.client, *self.more, self.gw1, self.gw2)

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


def test_a_peer_handed_in_twice_gets_one_handshake(gws):
    gws.move_vip(gws.gw2)
    gws.ping()
    gws.move_vip(gws.gw1)
    gws.advance(1)
    targets = [(gws.client.device.public_key, gws.client.endpoint)]
    since = gws.clock.now
    assert take_over(gws.gw1.device, gws.gw1.plane.perform, targets, since, since) == 1
    assert take_over(gws.gw1.device, gws.gw1.plane.perform, targets, since, since) == 0  # already under way
    gws.settle()
    gws.ping()
    assert gws.gw1.packets() == [ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")]


def test_a_peer_being_renewed_keeps_its_socket_and_the_answer_waiting_there(gws):
    """The takeover handshakes with every peer at once; the first to complete re-decides the pinned
    sockets. A peer whose stale session the takeover set aside must keep its socket: its answer may
    already wait in that socket's queue, and closing the socket would lose it (5 s until a retry)."""
    second = Side("client2", 3, gws.net, gws.clock, 11)
    second.device.add_peer(gws.gw1.device.public_key, allowed_ips=["10.0.0.2/32"], endpoint=gws.vip, name="vpn")
    for gw in (gws.gw1, gws.gw2):
        gw.device.add_peer(second.device.public_key, allowed_ips=["10.0.0.3/32"], name="client2")
    gws.more.append(second)  # closed with the others

    def ping(side, source):
        side.tun.inject_plain(ipv4_packet(source, "10.0.0.2", b"ping"))
        gws.settle()

    gws.move_vip(gws.gw2)
    ping(gws.client, "10.0.0.1")
    ping(second, "10.0.0.3")
    assert sorted(gws.gw2.bind.pinned()) == sorted([gws.client.endpoint, second.endpoint])
    gws.move_vip(gws.gw1)
    targets = [(c.device.public_key, c.endpoint) for c in (gws.client, second)]
    take_over(gws.gw1.device, gws.gw1.plane.perform, targets, gws.clock.now, gws.clock.now)
    gws.settle()
    gws.advance(6)

    gws.move_vip(gws.gw2)  # back to gw2, whose sessions with both are stale; their sockets are still there
    gw2 = gws.gw2
    take_over(gw2.device, gw2.plane.perform, targets, gws.clock.now, gws.clock.now)
    for client in (gws.client, second):  # both answer before gw2 looks
        client.plane.service(client.pending(), gws.clock.now)
    first_fd = gw2.bind._pins[gws.client.endpoint]
    gw2.plane.service([first_fd], gws.clock.now)  # only the first answer is read in this turn
    assert gw2.peer_of(gws.client).current is not None
    assert second.endpoint in gw2.bind.pinned()  # not closed with second's answer in it
    gws.settle()
    assert gw2.peer_of(second).current is not None and gw2.counters.drops.get("unknown_receiver", 0) == 0
    gw2.packets()
    ping(second, "10.0.0.3")
    assert gw2.packets() == [ipv4_packet("10.0.0.3", "10.0.0.2", b"ping")]
