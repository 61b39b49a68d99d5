"""Packet builders and reference checks shared by the tests (one place).

Everything here is naive on purpose: word-by-word checksums and struct
packing, to check the project's fast code against.
"""

import ipaddress
import struct

from tunnel.offload import (
    F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, TCP_ACK, TCP_PSH, VNET_HDR_LEN, pack_vnet, segment,
)

SRC4, DST4 = ipaddress.ip_address("10.1.2.3").packed, ipaddress.ip_address("192.168.77.9").packed
SRC6 = ipaddress.ip_address("fd00::1:2").packed
DST6 = ipaddress.ip_address("fd00:abcd::99").packed
TS_OPTS = bytes([1, 1, 8, 10]) + struct.pack(">II", 123456, 654321)


# -- reference implementation ---------------------------------------------

def ref_sum(data: bytes) -> int:
    """RFC 1071 ones'-complement sum with end-around carry, word by word."""
    if len(data) % 2:
        data = data + b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_valid(data: bytes) -> bool:
    return ref_sum(data) == 0xFFFF


def ref_csum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack(">BBH", 0, proto, length)
    return src + dst + struct.pack(">IxxxB", length, proto)


def ip4(proto, payload, ident=0x1234, ttl=64, tos=0, df=True, src=SRC4, dst=DST4):
    hdr = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident,
                                0x4000 if df else 0, ttl, proto, 0, src, dst))
    struct.pack_into(">H", hdr, 10, ref_csum(bytes(hdr)))
    return bytes(hdr) + payload


def ip6(proto, payload, hop=64, src=SRC6, dst=DST6):
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), proto, hop, src, dst) + payload


def tcp_seg(src, dst, seq, payload, flags=TCP_ACK, ack=777, window=500, opts=TS_OPTS,
            sport=40000, dport=5201, partial=False):
    """A TCP header+payload; partial=True puts the pseudo-header sum in the
    checksum field as the kernel does for CHECKSUM_PARTIAL."""
    thl = 20 + len(opts)
    seg = bytearray(struct.pack(">HHIIBBHHH", sport, dport, seq, ack, (thl // 4) << 4,
                                flags, window, 0, 0) + opts + payload)
    ps = pseudo(src, dst, 6, len(seg))
    value = ref_sum(ps) if partial else ref_csum(ps + bytes(seg))
    struct.pack_into(">H", seg, 16, value)
    return bytes(seg)


def udp_dgram(src, dst, payload, sport=1111, dport=2222, partial=False):
    seg = bytearray(struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload)
    ps = pseudo(src, dst, 17, len(seg))
    value = ref_sum(ps) if partial else (ref_csum(ps + bytes(seg)) or 0xFFFF)
    struct.pack_into(">H", seg, 6, value)
    return bytes(seg)


def tcp_packet(v6, seq, payload, **kw):
    ipkw = {k: kw.pop(k) for k in ("ident", "ttl", "tos", "df") if k in kw}
    if v6:
        return ip6(6, tcp_seg(SRC6, DST6, seq, payload, **kw))
    return ip4(6, tcp_seg(SRC4, DST4, seq, payload, **kw), **ipkw)


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, start=0, offset=0):
    b = bytearray(VNET_HDR_LEN)
    pack_vnet(b, 0, flags, gso_type, hdr_len, gso_size, start, offset)
    return bytes(b)


def tso(v6, payload, gso_size, seq=1000, flags=TCP_ACK | TCP_PSH, opts=TS_OPTS, ident=0x1234,
        src=None, dst=None):
    """A super-packet as the TUN hands it over, vnet header first (addresses as text, or the defaults)."""
    l3 = 40 if v6 else 20
    if src is None or dst is None:
        src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    else:
        src, dst = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    seg = tcp_seg(src, dst, seq, payload, flags=flags, opts=opts, partial=True)
    pkt = ip6(6, seg, src=src, dst=dst) if v6 else ip4(6, seg, ident=ident, src=src, dst=dst)
    hdr = vnet(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, l3 + 20 + len(opts),
               gso_size, l3, 16)
    return hdr + pkt


def uso(v6, payload, gso_size):
    l3 = 40 if v6 else 20
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    seg = udp_dgram(src, dst, payload, partial=True)
    pkt = ip6(17, seg) if v6 else ip4(17, seg, df=False)
    return vnet(F_NEEDS_CSUM, GSO_UDP_L4, l3 + 8, gso_size, l3, 6) + pkt


def check_ip(pkt: bytes):
    """Validates the IP header with the reference; returns (l4 offset, src, dst, proto)."""
    if pkt[0] >> 4 == 4:
        assert pkt[0] == 0x45
        assert struct.unpack_from(">H", pkt, 2)[0] == len(pkt)
        assert ref_valid(pkt[:20]), "bad IPv4 header checksum"
        return 20, pkt[12:16], pkt[16:20], pkt[9]
    assert struct.unpack_from(">H", pkt, 4)[0] == len(pkt) - 40
    return 40, pkt[8:24], pkt[24:40], pkt[6]


def check_l4(pkt: bytes):
    l4, src, dst, proto = check_ip(pkt)
    seg = pkt[l4:]
    assert ref_valid(pseudo(src, dst, proto, len(seg)) + seg), "bad L4 checksum"
    if proto == 17:
        assert struct.unpack_from(">H", seg, 4)[0] == len(seg)
        assert struct.unpack_from(">H", seg, 6)[0] != 0
    return l4, seg


def split_all(data: bytes):
    out = bytearray(70000)
    return [bytes(out[s:s + n]) for s, n in segment(memoryview(data), 0, len(data), out)]


def tcp_fields(pkt):
    l4, seg = check_l4(pkt)
    seq, = struct.unpack_from(">I", seg, 4)
    thl = (seg[12] >> 4) * 4
    return seq, seg[13], seg[thl:]


def ipv4_packet(src: str, dst: str, payload: bytes = b"hello", proto: int = 17, ident: int = 0) -> bytes:
    """A valid IPv4 header (with checksum) followed by `payload`."""
    return ip4(proto, payload, ident=ident, df=False, src=ipaddress.IPv4Address(src).packed,
               dst=ipaddress.IPv4Address(dst).packed)


def ipv6_packet(src: str, dst: str, payload: bytes = b"hello", next_header: int = 17) -> bytes:
    """A valid IPv6 header followed by `payload`."""
    return ip6(next_header, payload, src=ipaddress.IPv6Address(src).packed, dst=ipaddress.IPv6Address(dst).packed)


def ipv4_header_ok(packet: bytes) -> bool:
    return packet[0] == 0x45 and ref_valid(packet[:20])
