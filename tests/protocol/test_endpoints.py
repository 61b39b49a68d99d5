"""One peer, several endpoints: two gateways with the same key and a client that moves between them.

    client (10.0.0.1) ---- gw1 192.0.2.2:51820  (key G)
                      \\--- gw2 192.0.2.3:51820  (key G too, sessions of its own)

Covers the core calls tunnel/failover.py makes: switch_endpoint (a handshake
with the new endpoint at once, nothing sealed with a session it does not
hold, late packets from the old one still open), probe (an initiation that
moves nothing; its authenticated answer roams the peer; never while a
handshake of ours is in flight) and awaiting_reply (what the fail-over
reads to know that nothing comes back).
"""

from __future__ import annotations

from tunnel.protocol import Device
from tunnel.protocol.constants import (
    KEEPALIVE_TIMEOUT,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    REKEY_TIMEOUT,
)

from .pair import WALL_EPOCH, Network, Node, ipv4_packet, seeded_rng


def _gateways(seed: int):
    """client <-> gw1 established (one packet each way); gw2 shares gw1's key and knows the client."""
    net = Network(seed)
    client = net.add_node("client", 1)
    gw1 = net.add_node("gw1", 2)
    key = seeded_rng(f"{seed}-gw1")(32)  # what add_node gave gw1
    assert Device(key, wall_epoch=WALL_EPOCH).public_key == gw1.device.public_key
    rng = seeded_rng(f"{seed}-gw2")
    gw2 = Node("gw2", Device(key, wall_epoch=WALL_EPOCH, rng=rng), ("192.0.2.3", 51820), "10.0.0.2", "fd00::2",
               net)
    net.nodes.append(gw2)
    net.connect(client, gw1, endpoint_b=False)
    gw2.device.add_peer(client.device.public_key, allowed_ips=["10.0.0.1/32"], name="client")
    client.ping(gw1)
    gw1.ping(client)
    assert len(client.written) == 1 and len(gw1.written) == 1
    for n in (client, gw1, gw2):
        n.clear()
    return net, client, gw1, gw2


def _sent(net, node, kind, since=0):
    return [f for f in net.log[since:] if f.sender is node and f.data[0] == kind]


def _to_gw(client, payload=b"data"):
    return ipv4_packet(client.address4, "10.0.0.2", payload)


def test_switch_starts_a_handshake_there_at_once_and_stages_data_until_it_completes():
    net, client, gw1, gw2 = _gateways(seed=70)
    peer = client.peer_of(gw1)
    old = peer.current
    since = len(net.log)
    net.hold = lambda f: True  # see what the switch sends before anything answers
    net.handle(client, client.device.switch_endpoint(peer, gw2.endpoint, net.now))
    (init,) = net.held
    assert init.data[0] == MESSAGE_HANDSHAKE_INITIATION and init.destination == gw2.endpoint
    assert peer.endpoint == gw2.endpoint and peer.current is None and peer.previous is old
    client.send(_to_gw(client, b"while switching"), deliver=False)
    assert not _sent(net, client, MESSAGE_TRANSPORT_DATA, since), "sealed with gw1's session for gw2"
    assert len(peer.staged) == 1
    net.hold = None
    net.release_held()
    assert gw2.written == [_to_gw(client, b"while switching")]
    assert "handshake_completed" in client.event_kinds() and not gw1.received


def test_switch_ignores_the_rekey_spacing_of_the_old_endpoint():
    net, client, gw1, gw2 = _gateways(seed=71)
    peer = client.peer_of(gw1)
    net.handle(client, client.device.initiate(peer, net.now + REKEY_TIMEOUT))  # to gw1, unanswered
    net.queue.clear()
    net.set_time(net.now + REKEY_TIMEOUT + 1.0)  # well within REKEY_TIMEOUT of it
    assert client.device.initiate(peer, net.now) == []  # the spacing holds for gw1
    out = client.device.switch_endpoint(peer, gw2.endpoint, net.now)
    assert [(a.endpoint, a.data[0]) for a in out] == [(gw2.endpoint, MESSAGE_HANDSHAKE_INITIATION)]


def test_late_packets_from_the_old_endpoint_still_open_after_a_switch():
    net, client, gw1, gw2 = _gateways(seed=72)
    peer = client.peer_of(gw1)
    late = gw1.ping(client, deliver=False) and net.queue.pop()
    net.hold = lambda f: True  # gw2 has not answered yet
    net.handle(client, client.device.switch_endpoint(peer, gw2.endpoint, net.now))
    client.clear()
    net.deliver_one(late)
    assert len(client.written) == 1  # opened on `previous`
    # ...and an authenticated packet from gw1 roams the peer back: the caller (failover.py) decides
    assert peer.endpoint == gw1.endpoint and "roamed" in client.event_kinds()


def test_probe_moves_nothing_and_its_answer_roams_the_peer():
    net, client, gw1, gw2 = _gateways(seed=73)
    peer = client.peer_of(gw1)
    net.handle(client, client.device.switch_endpoint(peer, gw2.endpoint, net.now))
    net.deliver()
    on_gw2 = peer.current
    client.ping(gw2)
    assert len(gw2.written) == 1
    timers = (peer.t_retransmit_handshake, peer.t_send_keepalive, peer.t_new_handshake,
              peer.t_persistent_keepalive, peer.last_sent_initiation)
    net.advance(1.0)  # gw1 takes one initiation from a peer per 20 ms
    net.hold = lambda f: True
    out = client.device.probe(peer, gw1.endpoint, net.now)
    assert [(type(a).__name__, a.endpoint) for a in out] == [("SendDatagram", gw1.endpoint)]
    assert out[0].data[0] == MESSAGE_HANDSHAKE_INITIATION
    assert peer.endpoint == gw2.endpoint and peer.current is on_gw2
    assert (peer.t_retransmit_handshake, peer.t_send_keepalive, peer.t_new_handshake,
            peer.t_persistent_keepalive, peer.last_sent_initiation) == timers
    net.hold = None
    client.clear()
    since = len(net.log)
    net.handle(client, out)
    net.deliver()
    assert _sent(net, gw1, MESSAGE_HANDSHAKE_RESPONSE, since), gw1.drop_reasons()
    assert peer.endpoint == gw1.endpoint
    assert client.event_kinds()[:2] == ["roamed", "handshake_completed"]
    gw1.clear()
    client.ping(gw1, payload=b"back")
    assert gw1.written == [ipv4_packet(client.address4, gw1.address4, b"back")]


def test_an_unanswered_probe_leaves_the_session_working():
    net, client, gw1, gw2 = _gateways(seed=74)
    peer = client.peer_of(gw1)
    net.handle(client, client.device.switch_endpoint(peer, gw2.endpoint, net.now))
    net.deliver()
    probe = client.device.probe(peer, ("192.0.2.99", 51820), net.now)  # nobody there
    net.handle(client, probe)
    net.deliver()
    assert len(net.undeliverable) == 1
    net.advance(3 * REKEY_TIMEOUT)  # no retransmission of a probe
    assert len(net.undeliverable) == 1
    gw2.clear()
    client.ping(gw2, payload=b"still")
    assert gw2.written == [ipv4_packet(client.address4, "10.0.0.2", b"still")]
    assert peer.endpoint == gw2.endpoint


def test_no_probe_while_a_handshake_of_ours_is_in_flight():
    net, client, gw1, gw2 = _gateways(seed=75)
    peer = client.peer_of(gw1)
    net.hold = lambda f: True
    net.handle(client, client.device.switch_endpoint(peer, gw2.endpoint, net.now))
    assert client.device.probe(peer, gw1.endpoint, net.now) == []
    net.hold = None
    net.release_held()
    assert client.device.probe(peer, gw1.endpoint, net.now) != []


def test_awaiting_reply_follows_unanswered_data_and_initiations():
    net, client, gw1, gw2 = _gateways(seed=76)
    peer = client.peer_of(gw1)
    assert not peer.awaiting_reply
    client.ping(gw1, deliver=False)
    net.queue.clear()  # lost
    assert peer.awaiting_reply
    client.ping(gw1)  # answered by gw1's passive keepalive, KEEPALIVE_TIMEOUT later
    net.advance(KEEPALIVE_TIMEOUT + 0.1)
    assert not peer.awaiting_reply
    client.keepalive(gw1, deliver=False)  # a keepalive expects no answer
    net.queue.clear()
    assert not peer.awaiting_reply
    net.hold = lambda f: True
    net.handle(client, client.device.initiate(peer, net.now + REKEY_TIMEOUT))
    assert peer.awaiting_reply
    net.hold = None
    net.release_held()
    assert not peer.awaiting_reply
