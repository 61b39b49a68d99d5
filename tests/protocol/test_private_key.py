"""A Device's static private key: none at all, given later, changed, removed (Device.set_private_key).

What wireguard-go and the kernel do, and `tunnel-wg` needs: an interface
exists before its first `wg set private-key`, keeps its peers without a key
and sends nothing; a new key ends every session's sending at once and the
next packet handshakes with it, with no wait for REKEY_TIMEOUT; a peer whose
public key is our new one is removed; the same key again changes nothing.
"""

from __future__ import annotations

import pytest

from tunnel.protocol import Device, LocalError
from tunnel.protocol.constants import MESSAGE_HANDSHAKE_INITIATION, MESSAGE_TRANSPORT_DATA
from tunnel.protocol.crypto import DH_PUBKEY, clamp
from tunnel.protocol.errors import INVALID_PEER_KEY, NO_PRIVATE_KEY

from .pair import WALL_EPOCH, Network, established_pair, make_pair, seeded_rng, snapshot

# The low-order points of Curve25519 (and their non-canonical forms) that the kernel's selftest feeds
# `wg set`: an X25519 with any of them is all zeros, so no handshake with such a peer can be made.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def _keyless_node(net: Network, name: str, index: int):
    node = net.add_node(name, index)
    node.device.set_private_key(None, net.now)
    return node


def test_a_device_without_a_key_keeps_peers_and_sends_nothing():
    net = Network(seed=1)
    a = _keyless_node(net, "a", 1)
    b = net.add_node("b", 2)
    assert a.device.public_key is None and a.device.private_key is None
    # Peers can be added while a has no key (b knows a's key from elsewhere: any key).
    peer = a.device.add_peer(b.device.public_key, allowed_ips=["10.0.0.2/32"], endpoint=b.endpoint,
                             persistent_keepalive=1)
    a.ping(b)
    a.keepalive(b)
    net.advance(30)  # timers of a keyless peer: still nothing on the wire
    assert net.datagrams(sender=a) == []
    assert set(a.drop_reasons()) == {NO_PRIVATE_KEY}
    assert a.device.drops[NO_PRIVATE_KEY] >= 2
    # Whatever reaches it is dropped without a reply, also a well-formed initiation.
    b.device.add_peer(DH_PUBKEY(seeded_rng("some key")(32)), allowed_ips=["10.0.0.1/32"], endpoint=a.endpoint)
    b.ping(a)
    assert [f.data[0] for f in net.datagrams(sender=b)] == [MESSAGE_HANDSHAKE_INITIATION]
    assert net.datagrams(sender=a) == [] and a.written == []
    assert peer in a.device.peers.values()


def test_a_key_given_later_makes_the_interface_work():
    net = Network(seed=2)
    a = _keyless_node(net, "a", 1)
    b = net.add_node("b", 2)
    key = seeded_rng("a's key")(32)
    pub = DH_PUBKEY(key)
    a.device.add_peer(b.device.public_key, allowed_ips=["10.0.0.2/32"], endpoint=b.endpoint)
    b.device.add_peer(pub, allowed_ips=["10.0.0.1/32"], endpoint=a.endpoint)
    a.ping(b)  # no key yet: staged and dropped
    assert net.datagrams(sender=a) == []
    assert a.device.set_private_key(key, net.now) == []
    assert a.device.public_key == pub and a.device.private_key == clamp(key)
    packet = a.ping(b)
    assert packet in b.written
    b.ping(a)
    assert len(a.written) == 1


def test_a_new_key_handshakes_at_once():
    """The selftest's "change private keys and immediately handshake", in memory, at one instant."""
    net, a, b = established_pair(seed=3)
    old_pub = a.device.public_key
    new_key = seeded_rng("a's new key")(32)
    new_pub = DH_PUBKEY(new_key)
    a.device.set_private_key(new_key, net.now)
    # b trades the old identity of a for the new one (what `wg set peer NEW ... peer OLD remove` does).
    b.device.remove_peer(old_pub)
    b.device.add_peer(new_pub, allowed_ips=["10.0.0.1/32", "fd00::1/128"])
    since = len(net.log)
    sent = a.ping(b)  # no time has passed since the last handshake: no REKEY_TIMEOUT wait
    kinds = [f.data[0] for f in net.log[since:] if f.sender is a]
    assert kinds[0] == MESSAGE_HANDSHAKE_INITIATION
    assert sent in b.written
    assert b.peer_of(a).handshakes_completed == 1


def test_the_old_sessions_stop_sending_but_still_receive():
    net, a, b = established_pair(seed=4)
    peer = a.peer_of(b)
    old = peer.current
    a.device.set_private_key(seeded_rng("another")(32), net.now)
    assert peer.current is old and not old.can_send(net.now)
    assert peer.handshake.state == "zeroed" and peer.handshake.local is a.device.identity
    # What b still sends on the old session arrives (in flight when the key changed).
    packet = b.ping(a)
    assert a.written == [packet]
    # Sending from a starts a handshake that b cannot answer (it does not know the new key).
    since = len(net.log)
    a.ping(b)
    assert [f.data[0] for f in net.log[since:] if f.sender is a] == [MESSAGE_HANDSHAKE_INITIATION]
    assert not any(f.data[0] == MESSAGE_TRANSPORT_DATA for f in net.log[since:] if f.sender is a)


def test_the_same_key_again_changes_nothing():
    net, a, b = established_pair(seed=5)
    before = snapshot(a.device)
    key = a.device.private_key
    assert a.device.set_private_key(key, net.now) == []
    assert snapshot(a.device) == before


def test_a_peer_with_our_new_public_key_is_removed():
    net, a, b = make_pair(seed=6)
    key = seeded_rng("b's twin")(32)
    twin = a.device.add_peer(DH_PUBKEY(key), allowed_ips=["10.9.0.0/24"])
    removed = a.device.set_private_key(key, net.now)
    assert removed == [twin] and twin.removed
    assert DH_PUBKEY(key) not in a.device.peers and a.device.allowed_ips.prefixes(twin) == []
    with pytest.raises(LocalError):
        a.device.add_peer(DH_PUBKEY(key))


def test_removing_the_key_silences_the_device():
    net, a, b = established_pair(seed=7)
    old_pub = a.device.public_key
    a.device.set_private_key(None, net.now)
    since = len(net.log)
    a.ping(b)
    a.keepalive(b)
    net.advance(200)
    assert [f for f in net.log[since:] if f.sender is a] == []
    assert NO_PRIVATE_KEY in a.drop_reasons()
    # And back: a key again, and it works.
    a.device.set_private_key(seeded_rng("back")(32), net.now)
    b.device.remove_peer(old_pub)
    b.device.add_peer(a.device.public_key, allowed_ips=["10.0.0.1/32"])
    assert a.ping(b) in b.written


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=range(len(LOW_ORDER_POINTS)))
def test_a_low_order_public_key_is_a_peer_that_never_handshakes(point):
    device = Device(seeded_rng("x")(32), wall_epoch=WALL_EPOCH, rng=seeded_rng("x"))
    peer = device.add_peer(point, allowed_ips=["10.0.0.2/32"], endpoint=("127.0.0.1", 1111),
                           persistent_keepalive=1)
    out = device.set_persistent_keepalive(peer, 1, 0.0) + device.send_keepalive(peer, 0.0)
    for t in range(1, 30):
        out += device.tick(float(t))
    assert not any(type(a).__name__ == "SendDatagram" for a in out)
    assert device.drops[INVALID_PEER_KEY] > 0


def test_a_bad_key_length_is_our_own_mistake():
    device = Device(None, wall_epoch=WALL_EPOCH)
    with pytest.raises(LocalError):
        device.set_private_key(b"short", 0.0)
