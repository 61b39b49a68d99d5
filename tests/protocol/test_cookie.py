"""mac1/mac2 and the cookie round trip under load (whitepaper 5.3, 5.4.7)."""

from __future__ import annotations

from tunnel.protocol import SendDatagram
from tunnel.protocol.constants import (
    COOKIE_SECRET_LATENCY,
    COOKIE_SECRET_MAX_AGE,
    INITIATION_MAC1_OFFSET,
    MAC_LEN,
    MESSAGE_HANDSHAKE_COOKIE,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from tunnel.protocol.cookie import CookieChecker, CookieGenerator, source_bytes
from tunnel.protocol.crypto import MAC
from tunnel.protocol.errors import CookieRequired, InvalidMac
from tunnel.protocol.messages import CookieReply

from .pair import make_pair, seeded_rng, snapshot

MAC2 = INITIATION_MAC1_OFFSET + MAC_LEN  # 132


def _fresh_initiation(net, a, b) -> bytes:
    """A new initiation from a to b, taken off the wire instead of delivered."""
    a.peer_of(b).last_sent_initiation = None
    a.initiate(b, deliver=False)
    f = net.queue.pop()
    assert f.data[0] == MESSAGE_HANDSHAKE_INITIATION
    return f.data


def test_mac1_checked_before_anything_else():
    checker = CookieChecker(b"k" * 32, seeded_rng(1))
    gen = CookieGenerator(b"k" * 32)
    packet = bytearray(148)
    packet[0] = 1
    gen.add_macs(packet, INITIATION_MAC1_OFFSET, 0.0)
    checker.validate(bytes(packet), INITIATION_MAC1_OFFSET, ("h", 1), 0.0, False)
    packet[5] ^= 1
    try:
        checker.validate(bytes(packet), INITIATION_MAC1_OFFSET, ("h", 1), 0.0, True)
    except InvalidMac:
        pass
    else:
        raise AssertionError("tampered mac1 accepted")


def test_cookie_is_bound_to_source_address():
    assert source_bytes(("192.0.2.1", 1)) != source_bytes(("192.0.2.1", 2))
    checker = CookieChecker(b"k" * 32, seeded_rng(1))
    assert checker.make_cookie(("192.0.2.1", 1), 0.0) != checker.make_cookie(("192.0.2.2", 1), 0.0)


def test_cookie_round_trip_under_load():
    net, a, b = make_pair(seed=20)
    net.under_load.add("b")
    pa, pb = a.peer_of(b), b.peer_of(a)
    before_b = snapshot(b.device)[0]
    packet = a.ping(b)
    # b answered the initiation (mac2 empty) with a cookie reply only
    assert [(f.sender.name, f.data[0], len(f.data)) for f in net.log] == [
        ("a", MESSAGE_HANDSHAKE_INITIATION, 148), ("b", MESSAGE_HANDSHAKE_COOKIE, 64),
    ]
    assert net.log[0].data[MAC2:] == bytes(16)
    assert b.drop_reasons() == ["cookie_required"]
    assert snapshot(b.device)[0] == before_b  # no peer state touched on b
    # a consumed it silently and holds the cookie
    assert a.drops == [] and pa.cookie.has_cookie and pa.current is None
    # the retransmission (tick after REKEY_TIMEOUT + jitter) carries mac2 and is answered
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    second = net.log[2]
    assert second.sender is a and second.data[0] == MESSAGE_HANDSHAKE_INITIATION
    cookie = b.device.cookie_checker.make_cookie(a.endpoint, net.now)
    assert second.data[MAC2:] == MAC(cookie, second.data[:MAC2])
    assert [f.data[0] for f in net.log[3:]][:1] == [MESSAGE_HANDSHAKE_RESPONSE]
    assert b.written == [packet] and pb.current is not None and pa.current is not None


def test_response_under_load_gets_cookie_too():
    net, a, b = make_pair(seed=21)
    a.initiate(b, deliver=False)
    init = net.queue.pop()
    b.inject(init.data, a.endpoint)
    resp = net.queue.pop()
    out = a.inject(resp.data, b.endpoint, under_load=True)
    replies = [x for x in out if type(x) is SendDatagram]
    assert len(replies) == 1 and replies[0].data[0] == MESSAGE_HANDSHAKE_COOKIE and replies[0].endpoint == b.endpoint
    assert a.drop_reasons() == ["cookie_required"] and a.peer_of(b).current is None
    # b consumes the cookie addressed to its response (its keypair's index)
    net.deliver()
    assert b.drops == [] and b.peer_of(a).cookie.has_cookie


def test_cookie_reply_with_wrong_mac1_aad_dropped():
    net, a, b = make_pair(seed=22)
    pa = a.peer_of(b)
    init = _fresh_initiation(net, a, b)
    wrong = bytearray(init)
    wrong[INITIATION_MAC1_OFFSET] ^= 0x80  # the reply's AAD will be a mac1 a never sent
    sender = int.from_bytes(init[4:8], "little")
    reply = b.device.cookie_checker.create_reply(bytes(wrong), INITIATION_MAC1_OFFSET, sender, a.endpoint, net.now)
    assert len(reply) == 64
    before = snapshot(a.device)
    a.clear()
    a.inject(reply, b.endpoint)
    assert a.drop_reasons() == ["authentication"] and a.sent == []
    assert not pa.cookie.has_cookie and snapshot(a.device) == before
    # the right AAD is accepted, once
    good = b.device.cookie_checker.create_reply(init, INITIATION_MAC1_OFFSET, sender, a.endpoint, net.now)
    a.inject(good, b.endpoint)
    assert pa.cookie.has_cookie and a.drop_reasons() == ["authentication"]
    a.inject(good, b.endpoint)
    assert a.drop_reasons() == ["authentication", "authentication"]


def test_cookie_reply_to_unknown_index_dropped():
    net, a, b = make_pair(seed=23)
    init = _fresh_initiation(net, a, b)
    reply = b.device.cookie_checker.create_reply(init, INITIATION_MAC1_OFFSET, 12345, a.endpoint, net.now)
    a.inject(reply, b.endpoint)
    assert a.drop_reasons() == ["unknown_receiver"]


def test_mac2_from_another_address_needs_a_new_cookie():
    net, a, b = make_pair(seed=24)
    net.under_load.add("b")
    a.initiate(b)  # cookie for a's address
    assert a.peer_of(b).cookie.has_cookie
    net.set_time(REKEY_TIMEOUT)
    init = _fresh_initiation(net, a, b)
    assert init[MAC2:] != bytes(16)
    b.clear()
    b.inject(init, ("198.51.100.7", 9999), under_load=True)
    assert b.drop_reasons() == ["cookie_required"]
    assert [len(s.data) for s in b.sent] == [64] and b.sent[0].endpoint == ("198.51.100.7", 9999)
    b.clear()
    b.inject(init, a.endpoint, under_load=True)  # the same bytes from the cookie's address: answered
    assert b.drops == [] and [s.data[0] for s in b.sent] == [MESSAGE_HANDSHAKE_RESPONSE]


def test_cookie_secret_rotates():
    net, a, b = make_pair(seed=25)
    net.under_load.add("b")
    a.initiate(b)
    born = net.now
    old_cookie = a.peer_of(b).cookie._cookie
    assert len(old_cookie) == 16

    def with_old_mac2(init: bytes) -> bytes:
        return init[:MAC2] + MAC(old_cookie, init[:MAC2])

    # just before the secret's 120 s are up, the old cookie still works ...
    net.set_time(born + COOKIE_SECRET_MAX_AGE - 1)
    b.clear()
    b.inject(with_old_mac2(_fresh_initiation(net, a, b)), a.endpoint, under_load=True)
    assert b.drops == [] and [s.data[0] for s in b.sent] == [MESSAGE_HANDSHAKE_RESPONSE]
    # ... after them it does not: a cookie reply instead of a response
    net.set_time(born + COOKIE_SECRET_MAX_AGE + 1)
    b.clear()
    b.inject(with_old_mac2(_fresh_initiation(net, a, b)), a.endpoint, under_load=True)
    assert b.drop_reasons() == ["cookie_required"] and [len(s.data) for s in b.sent] == [64]


def test_initiator_stops_using_an_old_cookie():
    gen = CookieGenerator(b"k" * 32)
    checker = CookieChecker(b"k" * 32, seeded_rng(2))
    packet = bytearray(148)
    packet[0] = 1
    gen.add_macs(packet, INITIATION_MAC1_OFFSET, 0.0)
    reply = checker.create_reply(bytes(packet), INITIATION_MAC1_OFFSET, 1, ("h", 1), 0.0)
    gen.consume_reply(CookieReply.unpack(reply), 0.0)
    fresh = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
    gen.add_macs(packet, INITIATION_MAC1_OFFSET, fresh - 0.5)
    assert packet[MAC2:] != bytes(16)
    checker.validate(bytes(packet), INITIATION_MAC1_OFFSET, ("h", 1), fresh - 0.5, True)
    gen.add_macs(packet, INITIATION_MAC1_OFFSET, fresh + 0.5)
    assert packet[MAC2:] == bytes(16)
    try:
        checker.validate(bytes(packet), INITIATION_MAC1_OFFSET, ("h", 1), fresh + 0.5, True)
    except CookieRequired:
        pass
    else:
        raise AssertionError("empty mac2 accepted under load")


def test_not_under_load_ignores_mac2():
    net, a, b = make_pair(seed=26)
    init = bytearray(_fresh_initiation(net, a, b))
    init[MAC2:] = b"\xff" * 16
    b.inject(bytes(init), a.endpoint, under_load=False)
    assert b.drops == [] and [s.data[0] for s in b.sent] == [MESSAGE_HANDSHAKE_RESPONSE]
