"""Transport sessions between two (or three) in-memory Devices.

Covers: replayed and reordered data, rekeying by time and by message count,
REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES, the responder waiting for data on
a new keypair, roaming, the AllowedIPs source check and longest-prefix
routing, remove_peer, and padding.
"""

from __future__ import annotations

import struct

import pytest

from tunnel.protocol import Drop
from tunnel.protocol.constants import (
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_TRANSPORT_DATA,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)

from .pair import Network, established_pair, ipv4_header_ok, ipv4_packet, ipv6_packet, make_pair, snapshot


def _receiver(data: bytes) -> int:
    return struct.unpack_from("<I", data, 4)[0]


def _counter(data: bytes) -> int:
    return struct.unpack_from("<Q", data, 8)[0]


def _data_from(net, node, since=0):
    return [f for f in net.log[since:] if f.sender is node and f.data[0] == MESSAGE_TRANSPORT_DATA]


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def test_packets_arrive_intact_with_valid_headers():
    net, a, b = established_pair(seed=30)
    sent = [a.ping(b, payload=bytes([n % 256]) * n) for n in range(0, 300, 7)]
    sent += [a.ping(b, v6=True, payload=bytes([n % 256]) * n) for n in range(0, 300, 7)]
    assert b.written == sent
    assert all(ipv4_header_ok(p) for p in b.written if p[0] >> 4 == 4)
    counters = [_counter(f.data) for f in _data_from(net, a)]
    assert counters == list(range(len(counters)))  # nonces 0, 1, 2, ... on one session


def test_replayed_data_rejected_and_reorder_accepted():
    net, a, b = established_pair(seed=31)
    packets = [a.ping(b, payload=bytes([n]) * 10, deliver=False) for n in range(5)]
    flights = list(net.queue)
    net.queue.clear()
    for f in reversed(flights):  # out of order, all within the window
        net.deliver_one(f)
    assert b.written == list(reversed(packets)) and b.drops == []
    before = snapshot(b.device)
    for f in flights:
        net.replay(f)
    assert b.drop_reasons() == ["replayed"] * 5 and len(b.written) == 5
    assert snapshot(b.device) == before


def test_forged_transport_dropped_without_state_change():
    net, a, b = established_pair(seed=32)
    f = a.ping(b, deliver=False) and net.queue.pop()
    forged = bytearray(f.data)
    forged[-1] ^= 1
    before = snapshot(b.device)
    b.inject(bytes(forged), a.endpoint)
    assert b.drop_reasons() == ["authentication"] and snapshot(b.device) == before
    # the genuine packet with that counter is still accepted afterwards
    net.deliver_one(f)
    assert len(b.written) == 1


def test_unknown_receiver_index_dropped():
    net, a, b = established_pair(seed=33)
    f = a.ping(b, deliver=False) and net.queue.pop()
    bad = f.data[:4] + struct.pack("<I", _receiver(f.data) ^ 0xFFFF) + f.data[8:]
    b.inject(bad, a.endpoint)
    assert b.drop_reasons() == ["unknown_receiver"]


def test_invalid_inner_packet_dropped():
    net, a, b = established_pair(seed=34)
    good = ipv4_packet(a.address4, b.address4, b"x" * 40)
    lying = good[:2] + struct.pack("!H", 2000) + good[4:]  # claims more than it carries
    a.send(lying)
    assert b.drop_reasons() == ["invalid_inner_packet"] and b.written == []


# ---------------------------------------------------------------------------
# rekeying and expiry
# ---------------------------------------------------------------------------


def test_rekey_after_time_and_previous_keypair_still_decrypts():
    net, a, b = established_pair(seed=35)
    pa, pb = a.peer_of(b), b.peer_of(a)
    old_a, old_b = pa.current, pb.current
    net.advance(REKEY_AFTER_TIME - 1)
    mark = len(net.log)
    a.ping(b)
    assert not [f for f in net.log[mark:] if f.data[0] == MESSAGE_HANDSHAKE_INITIATION]  # 119 s: not yet
    # b has a packet in flight on the old session when a rekeys
    late = b.ping(a, payload=b"in flight", deliver=False)
    in_flight = net.queue.pop()
    assert _receiver(in_flight.data) == old_a.local_index
    net.advance(1.5)
    mark = len(net.log)
    p = a.ping(b, payload=b"after 120s")
    kinds = [(f.sender.name, f.data[0]) for f in net.log[mark:]]
    # the packet goes out on the old session, then the initiator starts a handshake
    assert kinds[:4] == [("a", 4), ("a", 1), ("b", 2), ("a", 4)]
    assert b.written[-1] == p
    assert pa.current is not old_a and pa.previous is old_a
    assert pb.current is not old_b and pb.previous is old_b
    # the old session still decrypts what was in flight
    net.deliver_one(in_flight)
    assert a.written[-1] == late
    # and traffic continues on the new keypairs, both ways
    a.ping(b, payload=b"new a")
    b.ping(a, payload=b"new b")
    assert _receiver(net.log[-2].data) == pb.current.local_index
    assert _receiver(net.log[-1].data) == pa.current.local_index
    assert b.written[-1] == ipv4_packet(a.address4, b.address4, b"new a")
    assert a.written[-1] == ipv4_packet(b.address4, a.address4, b"new b")


def test_responder_does_not_rekey_on_time():
    """Only the initiator of a session rekeys on its age (avoids both sides racing)."""
    net, a, b = established_pair(seed=36)
    net.advance(REKEY_AFTER_TIME + 1)
    mark = len(net.log)
    b.ping(a)
    assert [f.data[0] for f in net.log[mark:] if f.sender is b] == [MESSAGE_TRANSPORT_DATA]


@pytest.mark.parametrize("who", ["a", "b"])
def test_rekey_after_messages(who):
    net, a, b = established_pair(seed=37)
    sender, other = (a, b) if who == "a" else (b, a)
    peer = sender.peer_of(other)
    old = peer.current
    old.send_counter = REKEY_AFTER_MESSAGES - 1
    net.advance(REKEY_TIMEOUT)  # past the last initiation's rate limit
    mark = len(net.log)
    sender.ping(other)  # uses nonce 2**60 - 1: the limit not yet passed
    assert [f.data[0] for f in net.log[mark:]] == [MESSAGE_TRANSPORT_DATA]
    sender.ping(other)  # nonce 2**60: now past it
    mark2 = net.log[mark + 1:]
    assert [(f.sender.name, f.data[0]) for f in mark2][:3] == [
        (sender.name, 4), (sender.name, 1), (other.name, 2),
    ]
    assert _counter(mark2[0].data) == REKEY_AFTER_MESSAGES
    assert len(other.written) == 2  # both packets delivered (the second on the old keypair)
    assert peer.current is not old
    sender.ping(other, payload=b"on the new one")
    assert other.written[-1].endswith(b"on the new one")
    assert _counter(net.log[-1].data) < 4


def test_reject_after_messages_stages_and_rehandshakes():
    net, a, b = established_pair(seed=38)
    pa = a.peer_of(b)
    old = pa.current
    old.send_counter = REJECT_AFTER_MESSAGES
    mark = len(net.log)
    net.set_time(REKEY_TIMEOUT)  # a's own initiation rate limit allows one
    p = a.ping(b)
    kinds = [(f.sender.name, f.data[0]) for f in net.log[mark:]]
    assert kinds[:2] == [("a", 1), ("b", 2)]  # nothing sent on the exhausted keypair
    assert b.written[-1] == p and pa.current is not old


def test_reject_after_time_stages_until_new_handshake():
    net, a, b = established_pair(seed=39)
    pa, pb = a.peer_of(b), b.peer_of(a)
    old = pa.current
    net.advance(REJECT_AFTER_TIME + 1)
    mark = len(net.log)
    a.ping(b, deliver=False)
    # nothing encrypted with the expired key: an initiation only, the packet staged
    assert [f.data[0] for f in net.queue] == [MESSAGE_HANDSHAKE_INITIATION]
    assert len(pa.staged) == 1
    net.deliver()
    kinds = [(f.sender.name, f.data[0]) for f in net.log[mark:]]
    assert kinds == [("a", 1), ("b", 2), ("a", 4)]
    assert len(b.written) == 1 and pa.current is not old and not pa.staged
    # the same from the responder's side: b's session is expired too, now replaced
    b.ping(a)
    assert len(a.written) == 1 and _receiver(net.log[-1].data) == pa.current.local_index
    assert pb.current.local_index == pa.current.remote_index


def test_expired_keypair_does_not_decrypt():
    net, a, b = established_pair(seed=40)
    net.advance(REJECT_AFTER_TIME - 1)
    a.ping(b, deliver=False)
    data = [f for f in net.queue if f.data[0] == MESSAGE_TRANSPORT_DATA][0]
    net.queue.clear()
    net.set_time(net.now + 2)
    before = len(b.written)
    net.deliver_one(data)
    assert b.drop_reasons()[-1:] == ["expired_key"] and len(b.written) == before


def test_responder_uses_new_keypair_only_after_data_on_it():
    net, a, b = established_pair(seed=41)
    pa, pb = a.peer_of(b), b.peer_of(a)
    old_b = pb.current
    net.advance(REKEY_TIMEOUT + 1)
    # a rekeys; its confirming keepalive is held back
    net.hold = lambda f: f.sender is a and f.data[0] == MESSAGE_TRANSPORT_DATA
    a.initiate(b)
    assert pb.next is not None and pb.current is old_b
    mark = len(net.log)
    p = b.ping(a, payload=b"still old")
    f = net.log[mark]
    assert f.data[0] == MESSAGE_TRANSPORT_DATA and _receiver(f.data) == pa.previous.local_index
    assert a.written[-1] == p  # a decrypts it with its previous keypair
    # the keepalive on the new keypair arrives: b promotes it and uses it from now on
    net.hold = None
    net.release_held()
    assert pb.current is not old_b and pb.next is None and pb.previous is old_b
    b.ping(a, payload=b"new")
    assert _receiver(net.log[-1].data) == pa.current.local_index


def test_fresh_responder_stages_until_confirmed():
    net, a, b = make_pair(seed=42)
    pb = b.peer_of(a)
    net.hold = lambda f: f.sender is a and f.data[0] == MESSAGE_TRANSPORT_DATA
    a.initiate(b)
    mark = len(net.log)
    p = b.ping(a)
    # no current keypair on b: staged, and no new initiation (one was just answered)
    assert net.log[mark:] == [] and list(pb.staged) == [p]
    net.hold = None
    net.release_held()
    assert a.written == [p] and not pb.staged


# ---------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------


def test_roaming_follows_authenticated_packets():
    net, a, b = established_pair(seed=43)
    pb = b.peer_of(a)
    a.endpoint = ("198.51.100.20", 40000)  # a's NAT mapping changed
    a.ping(b)
    assert pb.endpoint == a.endpoint and "roamed" in b.event_kinds()
    b.ping(a)
    assert net.log[-1].destination == ("198.51.100.20", 40000) and len(a.written) == 1


def test_unauthenticated_packets_do_not_move_the_endpoint():
    net, a, b = established_pair(seed=44)
    pb = b.peer_of(a)
    f = a.ping(b, deliver=False) and net.queue.pop()
    net.deliver_one(f)
    attacker = ("203.0.113.66", 666)
    g = a.ping(b, deliver=False) and net.queue.pop()
    forged = g.data[:-1] + bytes([g.data[-1] ^ 1])
    b.inject(forged, attacker)  # bad tag
    b.inject(f.data, attacker)  # a genuine packet, replayed
    init = net.datagrams(a, MESSAGE_HANDSHAKE_INITIATION)[0]
    b.inject(init.data, attacker)  # an old initiation
    assert b.drop_reasons() == ["authentication", "replayed", "replayed_timestamp"]
    assert pb.endpoint == a.endpoint and "roamed" not in b.event_kinds()


# ---------------------------------------------------------------------------
# AllowedIPs: source check and routing
# ---------------------------------------------------------------------------


def _three():
    net = Network(seed=45)
    a, b, c = net.add_node("a", 1), net.add_node("b", 2), net.add_node("c", 3)
    a.device.add_peer(b.device.public_key, allowed_ips=["10.0.0.0/24", "fd00::/64"], endpoint=b.endpoint, name="b")
    a.device.add_peer(c.device.public_key, allowed_ips=["10.0.0.128/25", "fd00::8000/113"], endpoint=c.endpoint, name="c")
    b.device.add_peer(a.device.public_key, allowed_ips=["0.0.0.0/0", "::/0"], endpoint=a.endpoint)
    c.device.add_peer(a.device.public_key, allowed_ips=["0.0.0.0/0", "::/0"], endpoint=a.endpoint)
    return net, a, b, c


@pytest.mark.parametrize("dst,expected", [
    ("10.0.0.5", "b"), ("10.0.0.127", "b"), ("10.0.0.128", "c"), ("10.0.0.200", "c"),
    ("fd00::5", "b"), ("fd00::8001", "c"), ("fd00::7fff", "b"),
])
def test_outbound_longest_prefix_match(dst, expected):
    net, a, b, c = _three()
    src = a.address6 if ":" in dst else a.address4
    packet = ipv6_packet(src, dst) if ":" in dst else ipv4_packet(src, dst)
    a.send(packet)
    nodes = {"b": b, "c": c}
    assert nodes[expected].written == [packet]
    assert [n.written for name, n in nodes.items() if name != expected] == [[]]


@pytest.mark.parametrize("packet", [
    ipv4_packet("10.0.0.1", "192.168.1.1"), ipv6_packet("fd00::1", "fd01::1"), b"\x00" * 40, b"\x45",
])
def test_no_route_dropped(packet):
    net, a, b, c = _three()
    out = a.device.send_packet(packet, net.now)
    assert out == [Drop("no_route")] and net.queue == []


def test_inbound_source_must_be_allowed():
    net, a, b, c = _three()
    # b may carry 10.0.0.0/24 but not 10.0.0.128/25 (c's) nor anything outside
    ok = ipv4_packet("10.0.0.9", a.address4, b"ok")
    spoof_c = ipv4_packet("10.0.0.130", a.address4, b"spoof")
    outside = ipv4_packet("172.16.0.1", a.address4, b"outside")
    v6_outside = ipv6_packet("fd00::8005", a.address6, b"v6")  # c's part of fd00::/64
    for p in (ok, spoof_c, outside):
        b.send(p)
    c.send(v6_outside)  # allowed for c: fine
    assert a.written == [ok, v6_outside]
    assert a.drop_reasons() == ["disallowed_source", "disallowed_source"]
    # the session itself is fine: the drops were per packet
    assert a.device.peers[b.device.public_key].current is not None


def test_inbound_source_check_pair():
    net, a, b = established_pair(seed=46)
    b.send(ipv4_packet("10.0.0.99", a.address4))
    b.send(ipv6_packet("fd00::99", a.address6))
    assert a.written == [] and a.drop_reasons() == ["disallowed_source"] * 2


# ---------------------------------------------------------------------------
# removal
# ---------------------------------------------------------------------------


def test_remove_peer_ends_the_session():
    net, a, b = established_pair(seed=47)
    pa = b.peer_of(a)
    indices = [pa.current.local_index]
    a.ping(b, deliver=False)
    f = net.queue.pop()
    b.device.remove_peer(a.device.public_key)
    assert b.device.indices == {} and pa.current is None and b.device.next_deadline() is None
    net.deliver_one(f)
    assert b.drop_reasons() == ["unknown_receiver"] and b.written == []
    assert indices[0] not in b.device.indices
    # sending to its addresses now finds no route
    assert b.device.send_packet(ipv4_packet(b.address4, a.address4), net.now) == [Drop("no_route")]
    assert b.device.tick(net.now + 10_000) == []


# ---------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------


def _pad16(n: int) -> int:
    return (n + 15) // 16 * 16


@pytest.mark.parametrize("mtu", [1420, 1280, 1421])
@pytest.mark.parametrize("size", [20, 21, 28, 36, 100, 1279, 1280, 1281, 1407, 1408, 1409, 1419, 1420, 1421, 1500])
def test_padding(mtu, size):
    net, a, b = established_pair(seed=48, mtu=mtu)
    packet = ipv4_packet(a.address4, b.address4, bytes(size - 20))
    assert len(packet) == size
    a.send(packet)
    f = _data_from(net, a)[-1]
    expected = _pad16(size) if _pad16(size) <= mtu else max(size, mtu)
    assert len(f.data) == 16 + 16 + expected
    assert b.written == [packet]  # padding stripped by the receiver


def test_keepalive_is_32_bytes_and_writes_nothing():
    net, a, b = established_pair(seed=49)
    a.keepalive(b)
    assert len(net.log[-1].data) == 32 and b.written == [] and b.drops == []


def test_peer_without_endpoint_learns_it_from_a_handshake():
    """The server case: b has no endpoint for a until a's initiation arrives."""
    net, a, b = make_pair(seed=59, endpoint_b=False)
    pb = b.peer_of(a)
    assert b.device.send_packet(ipv4_packet(b.address4, a.address4), net.now) == [Drop("no_endpoint", pb)]
    assert not pb.staged
    a.ping(b)
    assert pb.endpoint == a.endpoint
    p = b.ping(a)
    assert a.written == [p]
