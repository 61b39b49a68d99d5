"""The IKpsk2 handshake: on its own (noise.py) and between two Devices.

Covers: handshakes from either side with and without a PSK; a wrong PSK, an
unknown or wrong public key rejected with a Drop, no session and no reply;
replayed initiations (timestamp), initiation floods (> 50/s), replayed
responses; failed checks leaving the handshake state untouched.
"""

from __future__ import annotations

import pytest

from tunnel.protocol import Drop, SendDatagram, WritePacket
from tunnel.protocol.constants import (
    HANDSHAKE_INITIATION_MIN_INTERVAL,
    INITIATION_MAC1_OFFSET,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    REKEY_TIMEOUT,
)
from tunnel.protocol.cookie import CookieGenerator
from tunnel.protocol.errors import (
    AuthenticationFailed,
    HandshakeFlood,
    ReplayedTimestamp,
    UnknownPeer,
)
from tunnel.protocol.messages import Initiation, Response
from tunnel.protocol.noise import (
    CONSUMED_INITIATION,
    CREATED_INITIATION,
    ZEROED,
    Handshake,
    StaticIdentity,
    consume_initiation,
)

from .pair import Network, make_pair, seeded_rng, snapshot

PSK = bytes(range(32))


# ---------------------------------------------------------------------------
# noise.py alone
# ---------------------------------------------------------------------------


def _identities(seed="n"):
    rng = seeded_rng(seed)
    i, r = StaticIdentity(rng(32)), StaticIdentity(rng(32))
    return rng, i, r


@pytest.mark.parametrize("psk", [None, PSK])
def test_handshake_derives_matching_keys(psk):
    rng, i, r = _identities()
    hi = Handshake(i, r.public, psk)
    hr = Handshake(r, i.public, psk)
    init = hi.create_initiation(0x1111, 1000.0, rng)
    assert hi.state == CREATED_INITIATION
    got = consume_initiation(r, Initiation.unpack(init.pack()), lambda k: hr if k == i.public else None, 5.0)
    assert got is hr and hr.state == CONSUMED_INITIATION and hr.remote_index == 0x1111
    resp = hr.create_response(0x2222, rng)
    hi.consume_response(Response.unpack(resp.pack()))
    ki, kr = hi.derive_session(), hr.derive_session()
    assert ki.send_key == kr.recv_key and ki.recv_key == kr.send_key and ki.send_key != ki.recv_key
    assert (ki.local_index, ki.remote_index, ki.initiator) == (0x1111, 0x2222, True)
    assert (kr.local_index, kr.remote_index, kr.initiator) == (0x2222, 0x1111, False)
    assert hi.state == hr.state == ZEROED  # the handshake is wiped once split


def test_psk_changes_the_keys():
    rng, i, r = _identities()
    keys = []
    for psk in (None, PSK):
        hi, hr = Handshake(i, r.public, psk), Handshake(r, i.public, psk)
        init = hi.create_initiation(1, 1000.0, rng)
        consume_initiation(r, init, lambda k: hr, 5.0)
        hi.consume_response(hr.create_response(2, rng))
        keys.append(hi.derive_session().send_key)
    assert keys[0] != keys[1]


def test_failed_response_leaves_handshake_untouched():
    rng, i, r = _identities()
    hi, hr = Handshake(i, r.public, PSK), Handshake(r, i.public, PSK)
    init = hi.create_initiation(1, 1000.0, rng)
    consume_initiation(r, init, lambda k: hr, 5.0)
    resp = hr.create_response(2, rng)
    before = (hi.state, hi.hash, hi.chaining_key, hi.ephemeral_private, hi.remote_index)
    bad = Response(resp.sender, resp.receiver, resp.ephemeral, bytes(16))
    with pytest.raises(AuthenticationFailed):
        hi.consume_response(bad)
    wrong_index = Response(resp.sender, resp.receiver + 1, resp.ephemeral, resp.encrypted_nothing)
    with pytest.raises(AuthenticationFailed):
        hi.consume_response(wrong_index)
    assert (hi.state, hi.hash, hi.chaining_key, hi.ephemeral_private, hi.remote_index) == before
    hi.consume_response(resp)  # the genuine one still completes
    assert hi.derive_session().send_key == hr.derive_session().recv_key


def test_failed_initiation_leaves_responder_untouched():
    rng, i, r = _identities()
    hi, hr = Handshake(i, r.public), Handshake(r, i.public)
    first = hi.create_initiation(1, 1000.0, rng)
    consume_initiation(r, first, lambda k: hr, 5.0)
    state = (hr.state, hr.hash, hr.chaining_key, hr.latest_timestamp, hr.last_initiation_consumption, hr.remote_index)
    with pytest.raises(ReplayedTimestamp):
        consume_initiation(r, first, lambda k: hr, 10.0)
    tampered = Initiation(9, first.ephemeral, first.encrypted_static, bytes(28))
    with pytest.raises(AuthenticationFailed):
        consume_initiation(r, tampered, lambda k: hr, 10.0)
    with pytest.raises(UnknownPeer):
        consume_initiation(r, hi.create_initiation(3, 1001.0, rng), lambda k: None, 10.0)
    assert (hr.state, hr.hash, hr.chaining_key, hr.latest_timestamp,
            hr.last_initiation_consumption, hr.remote_index) == state


def test_timestamps_strictly_increase_even_if_wall_clock_steps_back():
    rng, i, r = _identities()
    hi, hr = Handshake(i, r.public), Handshake(r, i.public)
    for n, wall in enumerate([1000.0, 1000.0, 999.0, 1000.001]):
        init = hi.create_initiation(n + 1, wall, rng)
        consume_initiation(r, init, lambda k: hr, 10.0 * n)  # accepted: newer every time


def test_flood_within_min_interval():
    rng, i, r = _identities()
    hi, hr = Handshake(i, r.public), Handshake(r, i.public)
    consume_initiation(r, hi.create_initiation(1, 1000.0, rng), lambda k: hr, 5.0)
    with pytest.raises(HandshakeFlood):
        consume_initiation(r, hi.create_initiation(2, 1001.0, rng), lambda k: hr, 5.0 + HANDSHAKE_INITIATION_MIN_INTERVAL / 2)
    consume_initiation(r, hi.create_initiation(3, 1002.0, rng), lambda k: hr, 5.0 + HANDSHAKE_INITIATION_MIN_INTERVAL * 1.000001)


# ---------------------------------------------------------------------------
# two Devices
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("psk", [None, PSK], ids=["nopsk", "psk"])
@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_handshake_and_data_both_ways(psk, initiator, v6):
    net, a, b = make_pair(seed=3, psk=psk)
    first, second = (a, b) if initiator == "a" else (b, a)
    p1 = first.ping(second, v6=v6, payload=b"one")
    assert second.written == [p1]
    p2 = second.ping(first, v6=v6, payload=b"two" * 100)
    assert first.written == [p2]
    kinds = [(f.sender.name, f.data[0]) for f in net.log]
    # one handshake only, started by `first`, data on the session it made
    assert kinds == [(first.name, 1), (second.name, 2), (first.name, 4), (second.name, 4)]
    assert "handshake_completed" in a.event_kinds() and "handshake_completed" in b.event_kinds()
    assert a.drops == b.drops == []
    pa, pb = a.peer_of(b), b.peer_of(a)
    assert pa.current.local_index == pb.current.remote_index
    assert pb.current.local_index == pa.current.remote_index
    assert pa.current.initiator == (initiator == "a") and pb.current.initiator == (initiator == "b")


def test_initiate_sends_only_initiation_then_keepalive():
    net, a, b = make_pair()
    out = a.initiate(b, deliver=False)
    assert [type(x) for x in out] == [SendDatagram] and len(out[0].data) == 148
    net.deliver()
    # the initiator confirms the session with a keepalive: b promotes its keypair
    pb = b.peer_of(a)
    assert pb.current is not None and pb.next is None
    assert b.written == []


def test_psk_mismatch_rejected():
    net = Network(seed=4)
    a, b = net.add_node("a", 1), net.add_node("b", 2)
    pa = a.device.add_peer(b.device.public_key, preshared_key=PSK, allowed_ips=["10.0.0.2/32"], endpoint=b.endpoint)
    pb = b.device.add_peer(a.device.public_key, preshared_key=bytes(32), allowed_ips=["10.0.0.1/32"], endpoint=a.endpoint)
    a.ping(b)
    # b cannot tell (the PSK enters only with the response); a rejects the response
    assert [(f.sender.name, f.data[0]) for f in net.log] == [("a", 1), ("b", 2)]
    assert a.drop_reasons() == ["authentication"]
    assert pa.current is None and pa.next is None and pa.previous is None
    assert pb.current is None  # b never saw data on its candidate keypair
    assert b.written == [] and a.written == []


def test_wrong_public_key_fails_mac1_without_reply():
    net = Network(seed=5)
    a, b, c = net.add_node("a", 1), net.add_node("b", 2), net.add_node("c", 3)
    # a believes c's key lives at b's address
    a.device.add_peer(c.device.public_key, allowed_ips=["10.0.0.2/32"], endpoint=b.endpoint)
    b.device.add_peer(a.device.public_key, allowed_ips=["10.0.0.1/32"], endpoint=a.endpoint)
    before = snapshot(b.device)
    a.ping(b)
    assert b.drop_reasons() == ["invalid_mac1"] and b.sent == []
    assert snapshot(b.device) == before


def test_unknown_initiator_rejected_without_reply():
    net = Network(seed=6)
    a, b, c = net.add_node("a", 1), net.add_node("b", 2), net.add_node("c", 3)
    a.device.add_peer(b.device.public_key, allowed_ips=["10.0.0.2/32"], endpoint=b.endpoint)
    pb = b.device.add_peer(c.device.public_key, allowed_ips=["10.0.0.1/32"], endpoint=c.endpoint)
    a.ping(b)
    assert b.drop_reasons() == ["unknown_peer"] and b.sent == []
    assert pb.handshake.state == ZEROED and pb.next is None and pb.current is None


def test_initiation_encrypted_to_wrong_static_rejected():
    """mac1 right (so DH work happens) but the Noise payload is for another key."""
    net = Network(seed=7)
    a, b, c = net.add_node("a", 1), net.add_node("b", 2), net.add_node("c", 3)
    b.device.add_peer(a.device.public_key, allowed_ips=["10.0.0.1/32"], endpoint=a.endpoint)
    hs = Handshake(a.device.identity, c.device.public_key)
    msg = hs.create_initiation(42, 1000.0, seeded_rng("x"))
    packet = bytearray(msg.pack())
    CookieGenerator(b.device.public_key).add_macs(packet, INITIATION_MAC1_OFFSET, 0.0)
    before = snapshot(b.device)
    b.inject(bytes(packet), a.endpoint)
    assert b.drop_reasons() == ["authentication"] and b.sent == []
    assert snapshot(b.device) == before


def test_replayed_initiation_rejected():
    net, a, b = make_pair(seed=8)
    a.initiate(b)
    init = net.datagrams(a, MESSAGE_HANDSHAKE_INITIATION)[0]
    b.clear()
    # later (no flood) and from an attacker's address: only the timestamp stops it
    net.advance(1.0)
    before = snapshot(b.device)
    b.inject(init.data, ("203.0.113.9", 4444))
    assert b.drop_reasons() == ["replayed_timestamp"] and b.sent == []
    assert snapshot(b.device) == before
    assert b.peer_of(a).endpoint == a.endpoint


def test_initiation_flood_rejected():
    net, a, b = make_pair(seed=9)
    pa = a.peer_of(b)
    a.initiate(b)
    assert b.drops == []
    # a (or someone with a's key) initiates again 10 ms later: newer timestamp, too soon
    net.set_time(net.now + HANDSHAKE_INITIATION_MIN_INTERVAL / 2)
    pa.last_sent_initiation = None  # bypass a's own REKEY_TIMEOUT limit
    before = snapshot(b.device)
    a.initiate(b)
    assert b.drop_reasons() == ["handshake_flood"]
    assert [f.sender.name for f in net.log].count("b") == 1  # no second response
    assert snapshot(b.device) == before
    # 1/50 s after the accepted one, an initiation is answered again
    net.set_time(HANDSHAKE_INITIATION_MIN_INTERVAL * 1.000001)
    pa.last_sent_initiation = None
    b.clear()
    a.initiate(b)
    assert b.drops == [] and [f.sender.name for f in net.log].count("b") == 2


def test_fifty_per_second_accepted():
    net, a, b = make_pair(seed=10)
    pa = a.peer_of(b)
    for n in range(50):
        # (a hair over 1/50 s apart: the clock is float)
        net.set_time(n * HANDSHAKE_INITIATION_MIN_INTERVAL * 1.000001)
        pa.last_sent_initiation = None
        a.initiate(b)
    assert b.drops == [] and b.peer_of(a).handshakes_completed == 50


def test_replayed_response_rejected():
    net, a, b = make_pair(seed=11)
    a.ping(b)
    resp = net.datagrams(b, MESSAGE_HANDSHAKE_RESPONSE)[0]
    a.clear()
    before = snapshot(a.device)
    net.replay(resp)
    assert a.drop_reasons() == ["unknown_receiver"] and a.sent == []
    assert snapshot(a.device) == before
    # and still after a's next handshake is in flight
    net.advance(REKEY_TIMEOUT)
    a.initiate(b, deliver=False)
    net.queue.clear()
    a.clear()
    net.replay(resp)
    assert len(a.drops) == 1 and a.sent == [] and a.peer_of(b).handshake.state == CREATED_INITIATION


def test_response_without_initiation_rejected():
    """A response crafted for an index we never gave out."""
    net, a, b = make_pair(seed=12)
    a.initiate(b, deliver=False)
    init = net.queue.pop(0)
    b.inject(init.data, a.endpoint)
    resp = net.queue.pop(0).data
    forged = resp[:8] + (int.from_bytes(resp[8:12], "little") ^ 1).to_bytes(4, "little") + resp[12:]
    a.inject(forged, b.endpoint)
    assert a.drop_reasons() == ["invalid_mac1"]  # mac1 covers the receiver index
    a.inject(resp, b.endpoint)
    assert a.peer_of(b).current is not None


def test_simultaneous_initiations_settle():
    net, a, b = make_pair(seed=13)
    a.initiate(b, deliver=False)
    b.initiate(a, deliver=False)
    net.deliver()
    # As in the kernel, each side's single handshake slot now holds the other's
    # initiation and its own initiation's index was replaced by the response's,
    # so both responses are refused; the retransmission settles it.
    assert a.drop_reasons() == b.drop_reasons() == ["unknown_receiver"]
    a.ping(b)
    b.ping(a)
    net.advance(REKEY_TIMEOUT + 1)
    assert len(a.written) == 1 and len(b.written) == 1
    # no index is orphaned: each index maps to a live keypair or an in-progress handshake
    for node in (a, b):
        peer = next(iter(node.device.peers.values()))
        live = {kp.local_index for kp in (peer.current, peer.previous, peer.next) if kp is not None}
        if peer.handshake.state != ZEROED:
            live.add(peer.handshake.local_index)
        assert set(node.device.indices) == live


def test_drop_has_no_reply_and_is_counted():
    net, a, b = make_pair()
    out = b.inject(b"\x01\0\0\0" + bytes(144), a.endpoint)
    assert out == [Drop("invalid_mac1")]
    assert b.device.drops == {"invalid_mac1": 1}
    assert not any(isinstance(x, (SendDatagram, WritePacket)) for x in out)
