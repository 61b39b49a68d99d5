"""The data plane over in-memory TUN and UDP: two DataPlanes, no root.

What goes in is what a kernel would hand the daemon (TSO super-packets
behind a vnet header, plain packets); what comes out is checked where a
kernel would see it (TUN writes, datagrams on the fake wire).
"""

from __future__ import annotations

import struct

import pytest

import ipaddress

from tunnel.offload import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET, VNET_HDR_LEN
from tunnel.protocol import transport
from tunnel.protocol.constants import (
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_TRANSPORT_DATA,
    REKEY_AFTER_TIME,
)

from ..helpers.packets import check_l4, ip4, ip6, ipv4_packet, ipv6_packet, tcp_fields, tso, udp_dgram
from ..helpers.planes import PlanePair, vnet_plain


@pytest.fixture(params=[True, False], ids=["vnet", "plain"])
def pair(request):
    p = PlanePair(vnet=request.param)
    yield p
    p.close()


def _inject(side, packet: bytes) -> None:
    side.tun.inject(vnet_plain(packet) if side.tun.vnet_hdr else packet)


def _established(pair: PlanePair) -> None:
    a, b = pair.sides
    _inject(a, ipv4_packet(a.address4, b.address4, b"hello"))
    pair.settle()
    assert b.packets() == [ipv4_packet(a.address4, b.address4, b"hello")]
    a.bind.take_sent()
    b.bind.take_sent()


def test_handshake_then_packets_both_ways_v4_and_v6(pair):
    a, b = pair.sides
    first = ipv4_packet(a.address4, b.address4, b"first")
    _inject(a, first)
    pair.settle()
    # The packet waited for the handshake, then went through.
    assert b.packets() == [first]
    assert [d[0] for _, d in a.bind.take_sent()][:1] == [MESSAGE_HANDSHAKE_INITIATION]
    back6 = ipv6_packet(b.address6, a.address6, b"six" * 50)
    _inject(b, back6)
    pair.settle()
    assert a.packets() == [back6]
    assert a.counters.rx_packets == 1 and b.counters.rx_packets == 1
    assert not a.counters.drops and not b.counters.drops
    assert a.peer_of(b).handshakes_completed == 1 and b.peer_of(a).rx_bytes > 0


@pytest.mark.parametrize("v6", [False, True])
def test_tso_super_packets_in_gro_trains_across_super_packets_out(v6):
    pair = PlanePair(vnet=True)
    a, b = pair.sides
    try:
        _established(pair)
        src, dst = (a.address6, b.address6) if v6 else (a.address4, b.address4)
        gso = 1368 if not v6 else 1348
        stream = bytes(range(256)) * 1024  # 256 KiB
        seq = 1000
        for off in range(0, len(stream), 60000):
            chunk = stream[off:off + 60000]
            a.tun.inject(tso(v6, chunk, gso, seq=seq + off, src=src, dst=dst))
        # a's loop reads the super-packets (a turn's byte budget at a time) and sends whole trains.
        sends = a.counters.udp_sends
        while a.tun.inbox:
            a.plane.service(a.pending(), pair.clock.now)
        sent = a.bind.take_sent()
        assert a.counters.udp_sends - sends <= 2 * 5
        expected = sum(-(-len(stream[o:o + 60000]) // gso) for o in range(0, len(stream), 60000))
        assert len(sent) == expected
        assert all(d[0] == MESSAGE_TRANSPORT_DATA for _, d in sent)
        # The wire got trains, which b reads as GRO trains: far fewer reads than datagrams.
        assert b.bind.queued() < expected // 10
        pair.settle()
        writes = b.writes()
        # Coalesced back: about one TUN write per super-packet, TCP GSO with NEEDS_CSUM.
        assert len(writes) <= 2 * (len(stream) // 60000 + 1)
        kinds = {VNET.unpack_from(w, 0)[1] for w in writes}
        assert kinds == {GSO_TCPV6 if v6 else GSO_TCPV4}
        # Split back as the kernel would: the same stream, every packet valid.
        got = bytearray()
        for w in writes:
            from ..helpers.packets import split_all
            for p in split_all(w):
                check_l4(p)
                s, _, payload = tcp_fields(p)
                assert s == seq + len(got)
                got += payload
        assert bytes(got) == stream
        assert not b.counters.drops
    finally:
        pair.close()


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("uso", [True, False])
def test_a_udp_stream_reaches_the_tun_in_udp_super_packets_when_it_takes_them(v6, uso):
    pair = PlanePair(vnet=True, uso=uso)
    a, b = pair.sides
    try:
        _established(pair)
        src, dst = (ipaddress.ip_address(x).packed for x in ((a.address6, b.address6) if v6 else (a.address4, b.address4)))
        datagrams = []
        for i in range(100):
            seg = udp_dgram(src, dst, bytes([i]) * (1200 if i < 99 else 77), sport=40000, dport=5201)
            datagrams.append(ip6(17, seg, src=src, dst=dst) if v6 else ip4(17, seg, ident=i, src=src, dst=dst))
        for d in datagrams:
            a.tun.inject(vnet_plain(d))
        pair.settle()
        writes = b.writes()
        if uso:
            # One write per GRO train read (a's loop sends them 64 a train at most): the kernel cuts them back.
            assert 2 <= len(writes) <= 4
            assert {VNET.unpack_from(w, 0)[1] for w in writes} == {GSO_UDP_L4}
        else:
            assert len(writes) == 100
            assert {VNET.unpack_from(w, 0)[1] for w in writes} == {GSO_NONE}
        from ..helpers.packets import split_all
        assert [p for w in writes for p in split_all(w)] == datagrams
        assert not b.counters.drops
    finally:
        pair.close()


def test_plain_tun_without_vnet_header_writes_single_packets():
    pair = PlanePair(vnet=False)
    a, b = pair.sides
    try:
        _established(pair)
        packets = [ipv4_packet(a.address4, b.address4, bytes([i]) * (100 + i)) for i in range(20)]
        for p in packets:
            a.tun.inject(p)
        pair.settle()
        assert b.packets() == packets
    finally:
        pair.close()


def _impaired(pair, impair):
    pair.net.impair = impair
    a, b = pair.sides
    packets = [ipv4_packet(a.address4, b.address4, i.to_bytes(2, "big") * 300) for i in range(200)]
    for p in packets:
        _inject(a, p)
    pair.settle()
    pair.net.impair = None
    return packets


def test_duplicated_datagrams_are_dropped_as_replays(pair):
    _established(pair)
    a, b = pair.sides
    packets = _impaired(pair, lambda ds, s, d: [x for x in ds for _ in (0, 1)])
    assert b.packets() == packets
    assert b.counters.drops["replayed"] == 200


def test_reordered_datagrams_inside_the_window_all_arrive(pair):
    _established(pair)
    a, b = pair.sides
    packets = _impaired(pair, lambda ds, s, d: list(reversed(ds)))
    got = b.packets()
    assert sorted(got) == sorted(packets) and len(got) == 200
    assert not b.counters.drops


def test_lost_datagrams_are_just_missing(pair):
    _established(pair)
    a, b = pair.sides
    packets = _impaired(pair, lambda ds, s, d: ds[::2])
    got = b.packets()
    assert 0 < len(got) < 200 and set(got) <= set(packets)
    assert not b.counters.drops


def test_replayed_capture_is_dropped_and_writes_nothing(pair):
    _established(pair)
    a, b = pair.sides
    _inject(a, ipv4_packet(a.address4, b.address4, b"once"))
    pair.settle()
    assert len(b.packets()) == 1
    captured = [d for _, d in a.bind.take_sent()]
    for d in captured:
        b.bind.inject(d, a.endpoint)
    pair.settle()
    assert b.packets() == []
    assert b.counters.drops["replayed"] == len(captured)


def test_inner_source_outside_the_peers_allowed_ips_is_dropped(pair):
    _established(pair)
    a, b = pair.sides
    _inject(a, ipv4_packet("10.9.9.9", b.address4, b"spoofed"))
    _inject(a, ipv6_packet("fd00::99", b.address6, b"spoofed"))
    pair.settle()
    assert b.packets() == []
    assert b.counters.drops["disallowed_source"] == 2


def _seal_raw(side, other, plaintext: bytes, now: float) -> bytes:
    """A transport message carrying arbitrary plaintext, sealed by the core for other (a malicious peer)."""
    buf = memoryview(bytearray(len(plaintext) + 64))

    def write(i, into, at):
        into[at:at + len(plaintext)] = plaintext
        return len(plaintext)

    sizes: list[int] = []
    transport.seal(side.device, side.peer_of(other), write, 0, 1, buf, 0, now, [], sizes)
    return bytes(buf[:sizes[0]])


@pytest.mark.parametrize("inner", [
    b"\x45" + bytes(19),                                                        # IPv4 total length 0
    bytes(ipv4_packet("10.0.0.1", "10.0.0.2", b"x"))[:2] + b"\x00\x0a" + bytes(16),  # total length 10
    b"\x45\x00\x00\x14" + bytes(10),                                            # shorter than 20 bytes
    b"\x60" + bytes(29),                                                        # IPv6 shorter than 40
    b"\x45\x00\x05\xdc" + bytes(60),                                            # claims more than it has
    b"\x10" + bytes(40),                                                        # neither v4 nor v6
])
def test_authenticated_garbage_inside_is_dropped_not_written(pair, inner):
    _established(pair)
    a, b = pair.sides
    b.bind.inject(_seal_raw(a, b, inner, pair.clock.now), a.endpoint)
    pair.settle()
    assert b.writes() == []
    assert b.counters.drops["invalid_inner_packet"] == 1


def test_keepalive_after_data_and_rekey_after_two_minutes(pair):
    _established(pair)
    a, b = pair.sides
    # b got data and sends nothing back: after KEEPALIVE_TIMEOUT its loop sends a keepalive.
    pair.advance(KEEPALIVE_TIMEOUT + 0.5)
    keepalives = [d for _, d in b.bind.take_sent() if len(d) == KEEPALIVE_SIZE]
    assert keepalives
    # Past REKEY_AFTER_TIME a's next packet starts a new handshake; traffic carries on.
    pair.advance(REKEY_AFTER_TIME)
    _inject(a, ipv4_packet(a.address4, b.address4, b"after rekey"))
    pair.settle()
    _inject(a, ipv4_packet(a.address4, b.address4, b"on the new session"))
    pair.settle()
    assert [p[20:] for p in b.packets()][-2:] == [b"after rekey", b"on the new session"]
    assert a.peer_of(b).handshakes_completed == 2
    assert b.peer_of(a).current is not None and b.peer_of(a).current.local_index != 0


def test_no_session_yet_packets_wait_for_the_handshake_in_order(pair):
    a, b = pair.sides
    packets = [ipv4_packet(a.address4, b.address4, bytes([i]) * 50) for i in range(10)]
    for p in packets:
        _inject(a, p)
    pair.settle()
    assert b.packets() == packets


def test_no_route_and_not_ip_are_counted(pair):
    a, b = pair.sides
    _inject(a, ipv4_packet(a.address4, "10.77.0.1", b"nowhere"))
    _inject(a, b"\x20" + bytes(40))
    pair.settle()
    assert a.counters.drops["no_route"] == 1 and a.counters.drops["not_ip"] == 1
    assert a.bind.take_sent() == []


def test_handshake_queue_takes_only_exact_sizes():
    pair = PlanePair(filter=False)  # the core's own check, as without the kernel's socket filter
    a, b = pair.sides
    try:
        for kind, size in ((1, 148), (2, 92), (3, 64)):
            for delta in (-1, 1):
                b.bind.inject(bytes([kind]) + bytes(size + delta - 1), a.endpoint)
        b.bind.inject(bytes([4, 0, 0, 0]) + bytes(20), a.endpoint)  # transport under 32 bytes
        b.bind.inject(b"", a.endpoint)
        b.bind.inject(bytes([1, 0, 1, 0]) + bytes(144), a.endpoint)  # reserved bytes not zero
        b.plane.service(b.pending(), pair.clock.now)
        assert not b.plane.handshakes and b.counters.handshakes_queued_max == 0
        assert b.counters.drops["malformed"] == 9
        # The right size is queued (and then refused by the core for its bad mac1).
        b.bind.inject(bytes([1]) + bytes(147), a.endpoint)
        b.plane.service(b.pending(), pair.clock.now)
        assert b.counters.handshakes_queued_max == 1 and b.counters.drops["invalid_mac1"] == 1
    finally:
        pair.close()


def test_vnet_header_of_plain_writes_is_empty():
    pair = PlanePair(vnet=True)
    a, b = pair.sides
    try:
        _established(pair)
        _inject(a, ipv4_packet(a.address4, b.address4, b"udp"))
        pair.settle()
        (w,) = b.writes()
        assert VNET.unpack_from(w, 0)[1] == GSO_NONE and w[VNET_HDR_LEN:][20:] == b"udp"
    finally:
        pair.close()


def test_run_loop_over_the_fakes_until_stop():
    import threading
    import time

    pair = PlanePair()
    a, b = pair.sides
    clock = time.monotonic
    a.plane.clock = b.plane.clock = clock
    pair.clock.now = clock()
    try:
        threads = [threading.Thread(target=s.plane.run) for s in (a, b)]
        for t in threads:
            t.start()
        packet = ipv4_packet(a.address4, b.address4, b"through run()")
        a.plane.call_soon_threadsafe(lambda: a.tun.inject(vnet_plain(packet)))
        deadline = time.monotonic() + 10
        while not b.tun.written and time.monotonic() < deadline:
            time.sleep(0.01)
        a.plane.stop()
        b.plane.stop()
        for t in threads:
            t.join(5)
        assert [w[VNET_HDR_LEN:] for w in b.tun.written] == [packet]
    finally:
        pair.close()


def test_counters_are_one_object_for_core_and_loop(pair):
    a, _ = pair.sides
    assert a.plane.stats is a.device.counters
    struct.pack  # noqa: B018 (keep the import honest)
