"""tunnel.checksum and tunnel.offload against naive reference code.

Every packet the Splitter writes is checked field by field with a
word-by-word checksum written here from RFC 1071; the Coalescer is checked
by re-splitting what it merged and comparing with what went in.
"""

import random
import struct

import pytest

from tunnel import checksum
from tunnel.offload import (
    F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, TCP_ACK, TCP_CWR, TCP_FIN, TCP_PSH, TCP_SYN, VNET_HDR_LEN, Coalescer,
    OffloadError, Splitter, pack_vnet, parse_vnet, segment,
)

from .helpers.packets import (
    DST4, DST6, SRC4, SRC6, TS_OPTS, check_ip, check_l4, ip4, ip6, pseudo, ref_csum, ref_sum, ref_valid,
    split_all, tcp_fields, tcp_packet, tcp_seg, tso, udp_dgram, uso, vnet,
)

# -- checksum -------------------------------------------------------------

def test_checksum_matches_reference_on_random_data():
    rng = random.Random(1)
    cases = [b"", b"\0", b"\xff", b"\xff\xff", b"\0" * 10, b"\xff" * 1401, b"\x01"]
    cases += [rng.randbytes(rng.randrange(1, 1600)) for _ in range(400)]
    for data in cases:
        assert checksum.ones_sum(data) == ref_sum(data)
        assert checksum.ones_sum(memoryview(data)) == ref_sum(data)
        if any(data):
            c = checksum.checksum(data)
            # Equal to the reference, except that a zero result is sent as 0xFFFF.
            assert c == (ref_csum(data) or 0xFFFF)
            even = data + b"\0" if len(data) % 2 else data
            assert checksum.is_valid(even + struct.pack(">H", c))
            assert ref_valid(even + struct.pack(">H", c))


def test_checksum_partial_sums_add_up():
    rng = random.Random(2)
    for _ in range(100):
        a, b = rng.randbytes(2 * rng.randrange(0, 50)), rng.randbytes(rng.randrange(0, 99))
        assert checksum.ones_sum(a + b) == checksum.ones_sum(b, checksum.raw_sum(a))
    src, dst = SRC4, DST4
    assert checksum.pseudo_header_sum(src, dst, 6, 1234) % 0xFFFF == ref_sum(pseudo(src, dst, 6, 1234)) % 0xFFFF
    assert checksum.pseudo_header_sum(SRC6, DST6, 17, 99999) % 0xFFFF == \
        ref_sum(pseudo(SRC6, DST6, 17, 99999)) % 0xFFFF


def test_vnet_header_round_trip():
    b = bytearray(12)
    pack_vnet(b, 2, F_NEEDS_CSUM, GSO_TCPV6, 72, 1368, 40, 16)
    assert parse_vnet(b, 2) == (F_NEEDS_CSUM, GSO_TCPV6, 72, 1368, 40, 16)
    # Little-endian u16 fields, as the kernel reads them on x86.
    assert b[2:12] == bytes([1, 4, 72, 0, 0x58, 0x05, 40, 0, 16, 0])


# -- splitting ------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size,gso", [(1, 1368), (1368, 1368), (1369, 1368), (64000, 1368),
                                      (65535 - 72, 1448), (5001, 1001), (9999, 7), (3000, 1000)])
def test_split_tcp_segments_are_valid_and_reassemble(v6, size, gso):
    rng = random.Random(size * 31 + gso)
    payload = rng.randbytes(size)
    if not v6 and 20 + 32 + size > 65535:
        payload = payload[:65535 - 52]
    data = tso(v6, payload, gso, seq=0xFFFFF000, flags=TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR)
    pkts = split_all(data)
    count = -(-len(payload) // gso)
    assert len(pkts) == count
    got = b""
    seq = 0xFFFFF000
    for i, pkt in enumerate(pkts):
        s, flags, body = tcp_fields(pkt)
        assert s == seq  # wraps around 2**32 on the way
        assert len(body) == (gso if i < count - 1 else len(payload) - gso * (count - 1))
        assert bool(flags & TCP_CWR) == (i == 0)
        assert bool(flags & (TCP_FIN | TCP_PSH)) == (i == count - 1)
        assert flags & (TCP_FIN | TCP_PSH) in (0, TCP_FIN | TCP_PSH)
        assert flags & TCP_ACK
        if not v6:
            assert struct.unpack_from(">H", pkt, 4)[0] == (0x1234 + i) & 0xFFFF
            assert pkt[6] == 0x40  # DF kept
        # The rest of the headers is the original one.
        assert pkt[-len(body) - 12:-len(body)] == TS_OPTS
        seq = (seq + len(body)) & 0xFFFFFFFF
        got += body
    assert got == payload


def test_split_ipv4_ident_wraps_and_no_options():
    payload = bytes(range(256)) * 20
    pkts = split_all(tso(False, payload, 1000, opts=b"", ident=0xFFFE))
    assert [struct.unpack_from(">H", p, 4)[0] for p in pkts] == [0xFFFE, 0xFFFF, 0, 1, 2, 3]
    assert b"".join(tcp_fields(p)[2] for p in pkts) == payload


def test_split_ignores_loose_hdr_len_and_partial_field():
    payload = random.Random(5).randbytes(4000)
    data = bytearray(tso(False, payload, 1400))
    struct.pack_into("<H", data, 2, 9999)  # hdr_len as the kernel may set it
    struct.pack_into(">H", data, VNET_HDR_LEN + 20 + 16, 0xBEEF)  # any partial value
    assert b"".join(tcp_fields(p)[2] for p in split_all(bytes(data))) == payload


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size,gso", [(3000, 1200), (1201, 1200), (99, 1200), (4001, 333)])
def test_split_udp_uso(v6, size, gso):
    payload = random.Random(size).randbytes(size)
    pkts = split_all(uso(v6, payload, gso))
    assert len(pkts) == -(-size // gso)
    got = b""
    for i, p in enumerate(pkts):
        l4, seg = check_l4(p)
        if not v6:
            assert struct.unpack_from(">H", p, 4)[0] == 0x1234 + i
        got += seg[8:]
    assert got == payload


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", [6, 17])
@pytest.mark.parametrize("size", [0, 1, 2, 777, 1400])
def test_plain_packet_needs_csum_is_completed(v6, proto, size):
    payload = random.Random(size).randbytes(size)
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    l3 = 40 if v6 else 20
    if proto == 6:
        seg, off = tcp_seg(src, dst, 5, payload, partial=True), 16
    else:
        seg, off = udp_dgram(src, dst, payload, partial=True), 6
    pkt = ip6(proto, seg) if v6 else ip4(proto, seg)
    data = vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, l3, off) + pkt
    out = split_all(data)
    assert len(out) == 1
    check_l4(out[0])
    assert out[0][l3 + off + 2:] == pkt[l3 + off + 2:]


def test_plain_packet_without_offload_is_copied_untouched():
    pkt = ip4(1, b"\x08\x00\x00\x00ping")  # ICMP, checksum not our business
    assert split_all(vnet() + pkt) == [pkt]


def test_split_writes_at_any_position_in_any_order():
    payload = random.Random(9).randbytes(10000)
    data = memoryview(tso(True, payload, 1300))
    sp = Splitter()
    count = sp.load(data, 0, len(data))
    assert count == 8 and sp.gso_size == 1300 and sp.max_len == 40 + 32 + 1300
    out = bytearray(count * 1500)
    views = {}
    for i in reversed(range(count)):
        n = sp.write(i, out, 16 + i * 1500)  # room for a WireGuard header in front
        views[i] = bytes(out[16 + i * 1500:16 + i * 1500 + n])
    assert b"".join(tcp_fields(views[i])[2] for i in range(count)) == payload
    # Reusing the splitter for another packet leaves nothing behind.
    small = tso(False, b"xyz", 1300)
    assert sp.load(memoryview(small), 0, len(small)) == 1
    n = sp.write(0, out, 0)
    assert tcp_fields(bytes(out[:n]))[2] == b"xyz"


def test_split_from_an_offset_of_a_larger_buffer():
    payload = random.Random(3).randbytes(3000)
    data = tso(False, payload, 1000)
    buf = bytearray(b"\xaa" * 7) + data + b"\xbb" * 5
    out = bytearray(5000)
    pkts = [bytes(out[s:s + n]) for s, n in segment(memoryview(buf), 7, len(data), out, 3)]
    assert b"".join(tcp_fields(p)[2] for p in pkts) == payload


@pytest.mark.parametrize("bad", [
    lambda d: d[:25],  # shorter than vnet + IP header
    lambda d: d[:VNET_HDR_LEN + 20 + 32],  # headers only, no payload
    lambda d: d[:1] + bytes([GSO_TCPV6]) + d[2:],  # v6 type on a v4 packet
    lambda d: d[:1] + bytes([3]) + d[2:],  # UFO
    lambda d: d[:4] + b"\0\0" + d[6:],  # gso_size 0
    lambda d: d[:VNET_HDR_LEN] + b"\x75" + d[VNET_HDR_LEN + 1:],  # IP version 7
    lambda d: d[:VNET_HDR_LEN + 9] + b"\x11" + d[VNET_HDR_LEN + 10:],  # says UDP
])
def test_split_rejects_nonsense(bad):
    data = bad(tso(False, b"x" * 3000, 1000))
    with pytest.raises(OffloadError):
        Splitter().load(memoryview(data), 0, len(data))


def test_split_rejects_checksum_offset_beyond_packet():
    pkt = ip4(17, udp_dgram(SRC4, DST4, b"abc"))
    data = vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 30) + pkt
    with pytest.raises(OffloadError):
        Splitter().load(data, 0, len(data))


# -- coalescing -----------------------------------------------------------

def coalesce(packets, **kw):
    c = Coalescer(**kw)
    for p in packets:
        c.add(memoryview(p))
    return c, [bytes(v) for v in c.flush()]


def resplit(outputs):
    return [p for o in outputs for p in split_all(o)]


def stream(packets):
    """(ports, seq, flags, payload) per packet: what must survive a merge
    and split of packets built by hand with equal IPv4 IDs."""
    out = []
    for p in packets:
        _, seg = check_l4(p)
        out.append((seg[:4], seg[4:8], seg[13], seg[(seg[12] >> 4) * 4:]))
    return out


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size", [1, 1368, 1369, 20000, 65535 - 52, 200000])
def test_coalesce_then_split_gives_back_the_packets(v6, size):
    payload = random.Random(size).randbytes(size)
    chunks = [payload[i:i + 60000] for i in range(0, size, 60000)]
    packets, seq = [], 5
    for ch in chunks:
        packets += split_all(tso(v6, ch, 1368, seq=seq, flags=TCP_ACK, opts=TS_OPTS))
        seq += len(ch)
    c, outs = coalesce(packets)
    for o in outs:
        flags, gso, hdr_len, gso_size, start, off = parse_vnet(o)
        if gso != GSO_NONE:
            l3 = 40 if v6 else 20
            assert (flags, gso, hdr_len, gso_size, start, off) == \
                (F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, l3 + 32, 1368, l3, 16)
            pkt = o[VNET_HDR_LEN:]
            check_ip(pkt)
            _, src, dst, _ = check_ip(pkt)
            # The checksum field holds the folded pseudo-header sum.
            field = struct.unpack_from(">H", pkt, l3 + 16)[0]
            assert field % 0xFFFF == ref_sum(pseudo(src, dst, 6, len(pkt) - l3)) % 0xFFFF
            assert len(pkt) <= 65535
        else:
            assert flags == F_DATA_VALID
    assert resplit(outs) == packets
    assert c.merged_packets + sum(parse_vnet(o)[1] == GSO_NONE for o in outs) == len(packets)
    if len(packets) > 2:
        assert c.super_packets == sum(parse_vnet(o)[1] != GSO_NONE for o in outs) > 0


def test_coalesce_keeps_psh_and_ends_batch_on_it():
    packets = split_all(tso(False, bytes(5000), 1000, flags=TCP_ACK | TCP_PSH))
    packets += split_all(tso(False, bytes(3000), 1000, seq=6000, flags=TCP_ACK))
    c, outs = coalesce(packets)
    assert len(outs) == 2
    assert resplit(outs) == packets
    assert outs[0][VNET_HDR_LEN + 20 + 13] == TCP_ACK | TCP_PSH


def test_coalesce_smaller_segment_ends_batch():
    p = [tcp_packet(False, 0, bytes(1000)), tcp_packet(False, 1000, bytes(500)),
         tcp_packet(False, 1500, bytes(1000)), tcp_packet(False, 2500, bytes(1000))]
    c, outs = coalesce(p)
    assert [parse_vnet(o)[1] for o in outs] == [GSO_TCPV4, GSO_TCPV4]
    assert [len(o) - VNET_HDR_LEN for o in outs] == [52 + 1500, 52 + 2000]


@pytest.mark.parametrize("change", [
    dict(seq=9999),  # gap
    dict(ack=778),
    dict(window=501),
    dict(opts=bytes([1, 1, 8, 10]) + struct.pack(">II", 123457, 654321)),
    dict(ttl=63),
    dict(tos=2),
    dict(df=False),
    dict(payload=bytes(1001)),  # bigger than the first
])
def test_coalesce_does_not_merge_mismatches(change):
    payload = change.pop("payload", bytes(1000))
    seq = change.pop("seq", 1000)
    first = tcp_packet(False, 0, bytes(1000))
    second = tcp_packet(False, seq, payload, **change)
    c, outs = coalesce([first, second])
    assert [o[VNET_HDR_LEN:] for o in outs] == [first, second]
    assert [parse_vnet(o)[:2] for o in outs] == [(F_DATA_VALID, GSO_NONE)] * 2


@pytest.mark.parametrize("flags", [TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_ACK | TCP_CWR, 0x04])
def test_coalesce_special_flags_pass_through_in_order(flags):
    p = [tcp_packet(False, 0, bytes(1000)), tcp_packet(False, 1000, bytes(1000)),
         tcp_packet(False, 2000, bytes(1000), flags=flags), tcp_packet(False, 3000, bytes(1000))]
    c, outs = coalesce(p)
    assert stream(resplit(outs)) == stream(p)
    assert [parse_vnet(o)[1] for o in outs] == [GSO_TCPV4, GSO_NONE, GSO_NONE]


def test_coalesce_interleaved_flows_and_pure_acks():
    a = split_all(tso(False, bytes(8000), 1000))
    b = split_all(tso(True, bytes(range(256)) * 30, 1000, seq=77))
    ack = tcp_packet(False, 0, b"", sport=5201, dport=40000)
    mixed = [x for pair in zip(a, b) for x in pair] + [ack]
    c, outs = coalesce(mixed)
    assert sorted(resplit(outs)) == sorted(mixed)
    assert c.super_packets == 2
    assert [parse_vnet(o)[:2] for o in outs if len(o) == VNET_HDR_LEN + len(ack)] == \
        [(F_DATA_VALID, GSO_NONE)]  # the ACK alone


def test_coalesce_passes_udp_icmp_and_garbage_with_zero_header():
    udp = ip4(17, udp_dgram(SRC4, DST4, b"hello"))
    icmp6 = ip6(58, b"\x80\x00\x00\x00abcd")
    junk = b"\x99" * 30
    frag = bytearray(tcp_packet(False, 0, bytes(1000)))
    frag[6] = 0x20  # MF
    struct.pack_into(">H", frag, 10, 0)
    struct.pack_into(">H", frag, 10, ref_csum(bytes(frag[:20])))
    c, outs = coalesce([udp, icmp6, junk, bytes(frag)])
    assert outs == [bytes(VNET_HDR_LEN) + p for p in (udp, icmp6, junk, bytes(frag))]


def test_coalesce_trims_wireguard_padding():
    p1 = tcp_packet(False, 0, bytes(1000))
    p2 = tcp_packet(True, 0, bytes(999))
    c, outs = coalesce([p1 + bytes(12), p2 + bytes(9)])
    assert [o[VNET_HDR_LEN:] for o in outs] == [p1, p2]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_bad_checksum_passes_with_flags_zero(v6):
    good = [tcp_packet(v6, i * 1000, bytes(1000)) for i in range(3)]
    bad = bytearray(tcp_packet(v6, 3000, bytes(1000)))
    bad[-1] ^= 1
    after = tcp_packet(v6, 4000, bytes(1000))
    c, outs = coalesce(good + [bytes(bad), after])
    assert c.bad_checksums == 1
    assert [parse_vnet(o)[:2] for o in outs] == [
        (F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4), (0, GSO_NONE), (F_DATA_VALID, GSO_NONE)]
    assert outs[1][VNET_HDR_LEN:] == bytes(bad)
    # Without verification the bad one would have been merged.
    c, outs = coalesce(good + [bytes(bad), after], verify=False)
    assert parse_vnet(outs[0])[1] != GSO_NONE and len(outs) == 1


def test_coalesce_bad_ipv4_header_checksum_not_merged():
    p = [tcp_packet(False, i * 1000, bytes(1000)) for i in range(2)]
    bad = bytearray(p[1])
    bad[8] = 99  # TTL changed, header checksum now wrong
    c, outs = coalesce([p[0], bytes(bad)])
    assert [parse_vnet(o)[0] for o in outs] == [F_DATA_VALID, 0]


def test_coalesce_output_stays_valid_until_next_flush_and_buffers_are_reused():
    c = Coalescer()
    first = split_all(tso(False, bytes(5000), 1000))
    for p in first:
        c.add(memoryview(p))
    out1 = c.flush()
    kept = [bytes(v) for v in out1]
    second = split_all(tso(False, b"\x01" * 5000, 1000, seq=5000))
    for p in second:
        c.add(memoryview(p))
    assert [bytes(v) for v in out1] == kept  # untouched by add()
    out2 = c.flush()
    assert resplit([bytes(v) for v in out2]) == second
    third = split_all(tso(False, b"\x02" * 5000, 1000, seq=10000))
    for p in third:
        c.add(memoryview(p))
    assert resplit([bytes(v) for v in c.flush()]) == third
    assert len(c._free) + len(c._busy) <= 2


def test_coalesce_arena_growth_keeps_earlier_views():
    c = Coalescer(arena_size=100)
    pkts = [ip4(17, udp_dgram(SRC4, DST4, bytes([i]) * 50)) for i in range(10)]
    for p in pkts:
        c.add(memoryview(p))
    assert [bytes(v[VNET_HDR_LEN:]) for v in c.flush()] == pkts


def test_coalesce_many_flows_beyond_limit_pass_through():
    pkts = [tcp_packet(False, 0, bytes(100), sport=1000 + i) for i in range(5)]
    pkts += [tcp_packet(False, 100, bytes(100), sport=1000 + i) for i in range(5)]
    c, outs = coalesce(pkts, max_flows=2)
    assert c.super_packets == 2
    assert sorted(stream(resplit(outs))) == sorted(stream(pkts))


# -- UDP datagrams merged into USO super-packets ----------------------------

def udp_packets(v6, sizes, first_ident=100, sport=1111, dport=2222, **ipkw):
    """Datagrams of one flow as a peer's kernel sends them: complete checksums, IPv4 IDs counting up."""
    rng = random.Random(len(sizes))
    out = []
    for i, size in enumerate(sizes):
        src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
        seg = udp_dgram(src, dst, rng.randbytes(size), sport=sport, dport=dport)
        out.append(ip6(17, seg, **ipkw) if v6 else ip4(17, seg, ident=first_ident + i, **ipkw))
    return out


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("verify", [False, True])
def test_coalesce_udp_then_split_gives_back_the_datagrams(v6, verify):
    packets = udp_packets(v6, [1200] * 10 + [300])
    c, outs = coalesce(packets, uso=True, verify=verify)
    assert len(outs) == 1
    flags, gso, hdr_len, gso_size, start, off = parse_vnet(outs[0])
    l3 = 40 if v6 else 20
    assert (flags, gso, hdr_len, gso_size, start, off) == (F_NEEDS_CSUM, GSO_UDP_L4, l3 + 8, 1200, l3, 6)
    pkt = outs[0][VNET_HDR_LEN:]
    _, src, dst, _ = check_ip(pkt)
    ulen = len(pkt) - l3
    assert struct.unpack_from(">H", pkt, l3 + 4)[0] == ulen == 8 + 12300
    # The checksum field holds the folded pseudo-header sum over the whole train, as the kernel's USO wants it.
    assert struct.unpack_from(">H", pkt, l3 + 6)[0] % 0xFFFF == ref_sum(pseudo(src, dst, 17, ulen)) % 0xFFFF
    assert resplit(outs) == packets
    assert (c.super_packets, c.merged_packets) == (1, 11)


def test_coalesce_udp_only_with_uso():
    packets = udp_packets(False, [1200] * 4)
    _, outs = coalesce(packets)
    assert outs == [bytes(VNET_HDR_LEN) + p for p in packets]


def test_coalesce_udp_bounds_and_edges():
    # At most UDP_MAX_SEGMENTS a super-packet, and never past 65535 bytes.
    packets = udp_packets(False, [1000] * 70)
    c, outs = coalesce(packets, uso=True)
    assert [parse_vnet(o)[1] for o in outs] == [GSO_UDP_L4, GSO_UDP_L4]
    assert resplit(outs) == packets
    big = udp_packets(True, [8000] * 9)
    c, outs = coalesce(big, uso=True)
    assert all(len(o) - VNET_HDR_LEN <= 65535 + 40 for o in outs) and len(outs) == 2
    assert resplit(outs) == big
    # A larger datagram starts a new train; a smaller one ends one.
    packets = udp_packets(False, [500, 500, 900, 900, 100, 900])
    c, outs = coalesce(packets, uso=True)
    assert [len(split_all(o)) for o in outs] == [2, 3, 1]
    assert resplit(outs) == packets


def test_coalesce_udp_does_not_merge_what_the_kernel_would_not():
    a = udp_packets(False, [600] * 3)
    # Other ports, another TTL, TCP on the same addresses and ports: flows of their own, order kept in each.
    other = udp_packets(False, [600] * 2, first_ident=7, sport=9999)
    ttl = udp_packets(False, [600], first_ident=103, ttl=3)
    tcp = [tcp_packet(False, 0, bytes(600), sport=1111, dport=2222)]
    c, outs = coalesce([a[0], other[0], a[1], tcp[0], other[1], a[2], ttl[0]], uso=True)
    got = resplit(outs)
    assert [p for p in got if p in a] == a and [p for p in got if p in other] == other
    assert sorted(got) == sorted(a + other + ttl + tcp)
    assert c.super_packets == 2  # a (3) and other (2)
    # A zero UDP checksum (IPv4: none), a length that disagrees with IP, a fragment: passed, in order.
    zero = bytearray(udp_packets(False, [600], first_ident=103)[0])
    struct.pack_into(">H", zero, 26, 0)
    bad_len = bytearray(udp_packets(False, [600], first_ident=104)[0])
    struct.pack_into(">H", bad_len, 24, 500)
    c, outs = coalesce(a + [bytes(zero), bytes(bad_len)], uso=True)
    assert [parse_vnet(o)[1] for o in outs] == [GSO_UDP_L4, GSO_NONE, GSO_NONE]
    assert resplit(outs) == a + [bytes(zero), bytes(bad_len)]


def test_coalesce_udp_bad_checksum_is_not_merged_when_verifying():
    packets = [bytearray(p) for p in udp_packets(True, [700] * 3)]
    packets[1][-1] ^= 0xFF
    packets = [bytes(p) for p in packets]
    c, outs = coalesce(packets, uso=True, verify=True)
    assert c.bad_checksums == 1 and c.super_packets == 0
    assert [parse_vnet(o)[0] for o in outs] == [F_DATA_VALID, 0, F_DATA_VALID]
    assert resplit(outs) == packets
