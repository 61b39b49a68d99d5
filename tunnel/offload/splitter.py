"""Splitting TSO/USO super-packets read from the TUN into wire packets with
complete checksums (the sending side; see tunnel/offload/__init__.py)."""

import struct

from ..checksum import F1, F2, F3, F4, M1, M2, M3, M4, MOD, raw_sum, reduce
from .vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    VNET,
    VNET_HDR_LEN,
    OffloadError,
    IP4_TAIL,
    IP6_PLEN,
    TCP_TAIL,
    U16,
    UDP_TAIL,
)

try:  # vectorised payload sums; see _segment_sums
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is a dependency, this keeps the slow path honest
    _np = None

# Below this many full segments the per-call overhead of numpy outweighs it.
_NUMPY_MIN_SEGMENTS = 3


def _segment_sums(buf, start: int, size: int, count: int) -> list:
    """Unreduced ones'-complement sums of `count` payload chunks of `size` bytes from buf[start:].

    One numpy call sums every full segment of a super-packet as big-endian
    16-bit words (~0.3 us a segment, against ~1.5 us for the big-integer
    trick done per segment); [] when numpy is missing, the chunks are few or
    odd-sized, and the caller then sums each chunk itself.
    """
    if _np is None or count < _NUMPY_MIN_SEGMENTS or size & 1:
        return []
    words = _np.frombuffer(buf, dtype=">u2", count=count * size // 2, offset=start)
    return words.reshape(count, size // 2).sum(axis=1, dtype=_np.uint64).tolist()


def _fold(chunk, n: int) -> int:
    """Unreduced-but-folded sum of one chunk (the segments numpy did not sum)."""
    x = int.from_bytes(chunk, "big")
    if n & 1:
        x <<= 8
    x = (x >> F1) + (x & M1)
    x = (x >> F2) + (x & M2)
    x = (x >> F3) + (x & M3)
    return (x >> F4) + (x & M4)


class Splitter:
    """Splits one super-packet read from the TUN into wire packets.

    Reuse one instance: `count = sp.load(buf, offset, length)` parses the
    vnet header at buf[offset:offset+10] and the packet after it (the
    `length` bytes `Tun.read_into` returned); then `sp.write(i, out, pos)`
    for i in range(count) writes segment i as a complete IP packet at
    out[pos:] and returns its length (at most `sp.max_len`). Segments can
    be written in any order, to any buffer, as long as `buf` is unchanged.
    A packet without GSO is one segment: copied, its checksum completed if
    the kernel marked it NEEDS_CSUM.
    """

    __slots__ = (
        "count", "max_len", "gso_size", "write",
        "_src", "_hdr_start", "_hl", "_l4", "_pay", "_last", "_tail",
        "_base", "_ip_base", "_seq", "_ident", "_ip_frag", "_ip_ttlp",
        "_ack", "_offbyte", "_window", "_f_first", "_f_mid", "_f_last",
        "_l4hl", "_csum_at", "_end", "_sums",
    )

    def __init__(self):
        self.count = 0
        self.max_len = 0
        self.gso_size = 0
        self.write = None

    def load(self, buf, offset: int, length: int) -> int:
        if length < VNET_HDR_LEN + 20:
            raise OffloadError("packet shorter than vnet header + IP header")
        flags, gso_type, _, gso_size, csum_start, csum_offset = \
            VNET.unpack_from(buf, offset)
        ip = offset + VNET_HDR_LEN
        end = offset + length
        self._src = buf
        self._hdr_start = ip
        self._end = end
        kind = gso_type & ~GSO_ECN
        if kind == GSO_NONE:
            return self._load_plain(flags, ip, end, csum_start, csum_offset)
        if gso_size == 0:
            raise OffloadError("GSO packet with gso_size 0")
        first = buf[ip]
        version = first >> 4
        if version == 4:
            ihl = (first & 15) * 4
            if ihl < 20:
                raise OffloadError("IPv4 header length below 20")
            proto = buf[ip + 9]
            l4 = ip + ihl
            addr_sum = raw_sum(buf[ip + 12:ip + 20])
        elif version == 6:
            proto = buf[ip + 6]
            l4 = ip + 40
            addr_sum = raw_sum(buf[ip + 8:ip + 40])
        else:
            raise OffloadError("GSO packet is neither IPv4 nor IPv6")
        if kind == GSO_TCPV4 or kind == GSO_TCPV6:
            if proto != PROTO_TCP or (version == 4) != (kind == GSO_TCPV4):
                raise OffloadError("TCP GSO type does not match the packet")
            if l4 + 20 > end:
                raise OffloadError("truncated TCP header")
            l4hl = (buf[l4 + 12] >> 4) * 4
        elif kind == GSO_UDP_L4:
            if proto != PROTO_UDP:
                raise OffloadError("UDP GSO type on a non-UDP packet")
            l4hl = 8
        else:
            raise OffloadError(f"unsupported gso_type {gso_type}")
        hdr_end = l4 + l4hl
        if l4hl < 8 or hdr_end >= end:
            raise OffloadError("GSO packet without payload")
        payload = end - hdr_end
        count = -(-payload // gso_size)
        self.count = count
        self.gso_size = gso_size
        self.max_len = hdr_end - ip + min(gso_size, payload)
        self._hl = hdr_end - ip
        self._l4 = l4 - ip
        self._l4hl = l4hl
        self._pay = hdr_end
        self._last = count - 1
        self._tail = payload - gso_size * (count - 1)
        if version == 4:
            ident, frag, ttlp, ip_csum = struct.unpack_from(">HHHH", buf, ip + 4)
            total_field = (buf[ip + 2] << 8) | buf[ip + 3]
            # Header sum without the fields rewritten per segment.
            self._ip_base = (raw_sum(buf[ip:l4]) - total_field - ident - ip_csum) % MOD
            self._ident = ident
            self._ip_frag = frag
            self._ip_ttlp = ttlp
        else:
            self._ip_base = None
        if kind == GSO_UDP_L4:
            length_field, csum = struct.unpack_from(">HH", buf, l4 + 4)
            self._base = (addr_sum + PROTO_UDP + raw_sum(buf[l4:hdr_end])
                          - length_field - csum) % MOD
            self.write = self._write_udp4 if version == 4 else self._write_udp6
        else:
            seq, ack, offflags, window, csum = TCP_TAIL.unpack_from(buf, l4 + 4)
            tflags = offflags & 0xFF
            self._base = (addr_sum + PROTO_TCP + raw_sum(buf[l4:hdr_end])
                          - seq - tflags - csum) % MOD
            self._seq = seq
            self._ack = ack
            self._offbyte = offflags & 0xFF00
            self._window = window
            # The first segment keeps CWR, only the last keeps FIN and PSH,
            # as the kernel's TSO does.
            if count == 1:
                self._f_first = tflags
            else:
                self._f_first = tflags & ~(TCP_FIN | TCP_PSH)
            self._f_mid = tflags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
            self._f_last = tflags & ~TCP_CWR
            self._sums = _segment_sums(buf, hdr_end, gso_size, count - 1)
            self.write = self._write_tcp4 if version == 4 else self._write_tcp6
        return count

    def _load_plain(self, flags, ip, end, csum_start, csum_offset):
        self.count = 1
        self.gso_size = 0
        self.max_len = end - ip
        self._hl = end - ip
        if flags & F_NEEDS_CSUM:
            if csum_start + csum_offset + 2 > end - ip:
                raise OffloadError("checksum offset beyond the packet")
            self._pay = ip + csum_start
            self._csum_at = csum_start + csum_offset
            self.write = self._write_csum
        else:
            self.write = self._write_copy
        return 1

    # -- one writer per kind, chosen once per super-packet by load() --------

    def _write_copy(self, i, out, pos):
        n = self._hl
        h = self._hdr_start
        out[pos:pos + n] = self._src[h:h + n]
        return n

    def _write_csum(self, i, out, pos):
        # The field holds the pseudo-header sum; summing from csum_start
        # to the end (field included) completes it.
        n = self._hl
        h = self._hdr_start
        src = self._src
        out[pos:pos + n] = src[h:h + n]
        total = raw_sum(src[self._pay:self._end])
        U16.pack_into(out, pos + self._csum_at, MOD - reduce(total))
        return n

    # The TCP writers are the hot path: copy and checksum are inlined, the
    # payload's sum folded as in tunnel.checksum.reduce.

    def _write_tcp4(self, i, out, pos):
        src = self._src
        hl = self._hl
        h = self._hdr_start
        out[pos:pos + hl] = src[h:h + hl]
        plen = self._tail if i == self._last else self.gso_size
        start = self._pay + i * self.gso_size
        chunk = src[start:start + plen]
        q = pos + hl
        out[q:q + plen] = chunk
        sums = self._sums
        x = sums[i] if i < len(sums) else _fold(chunk, plen)
        total = hl + plen
        ident = (self._ident + i) & 0xFFFF
        IP4_TAIL.pack_into(out, pos + 2, total, ident, self._ip_frag,
                            self._ip_ttlp,
                            MOD - (self._ip_base + total + ident) % MOD)
        if i == 0:
            f = self._f_first
        elif i == self._last:
            f = self._f_last
        else:
            f = self._f_mid
        seq = (self._seq + i * self.gso_size) & 0xFFFFFFFF
        TCP_TAIL.pack_into(out, pos + self._l4 + 4, seq, self._ack,
                            self._offbyte | f, self._window,
                            MOD - (self._base + seq + f + self._l4hl + plen + x) % MOD)
        return total

    def _write_tcp6(self, i, out, pos):
        src = self._src
        hl = self._hl
        h = self._hdr_start
        out[pos:pos + hl] = src[h:h + hl]
        plen = self._tail if i == self._last else self.gso_size
        start = self._pay + i * self.gso_size
        chunk = src[start:start + plen]
        q = pos + hl
        out[q:q + plen] = chunk
        sums = self._sums
        x = sums[i] if i < len(sums) else _fold(chunk, plen)
        l4len = self._l4hl + plen
        IP6_PLEN.pack_into(out, pos + 4, l4len)
        if i == 0:
            f = self._f_first
        elif i == self._last:
            f = self._f_last
        else:
            f = self._f_mid
        seq = (self._seq + i * self.gso_size) & 0xFFFFFFFF
        TCP_TAIL.pack_into(out, pos + self._l4 + 4, seq, self._ack,
                            self._offbyte | f, self._window,
                            MOD - (self._base + seq + f + l4len + x) % MOD)
        return hl + plen

    def _copy_segment(self, i, out, pos):
        """Copies headers and payload of segment i; returns (plen, data sum)."""
        src = self._src
        hl = self._hl
        h = self._hdr_start
        out[pos:pos + hl] = src[h:h + hl]
        plen = self._tail if i == self._last else self.gso_size
        start = self._pay + i * self.gso_size
        chunk = src[start:start + plen]
        q = pos + hl
        out[q:q + plen] = chunk
        return plen, reduce(raw_sum(chunk))

    def _write_udp4(self, i, out, pos):
        plen, data = self._copy_segment(i, out, pos)
        total = self._hl + plen
        ident = (self._ident + i) & 0xFFFF
        IP4_TAIL.pack_into(out, pos + 2, total, ident, self._ip_frag,
                            self._ip_ttlp,
                            MOD - (self._ip_base + total + ident) % MOD)
        self._udp_tail(out, pos, plen, data)
        return total

    def _write_udp6(self, i, out, pos):
        plen, data = self._copy_segment(i, out, pos)
        IP6_PLEN.pack_into(out, pos + 4, 8 + plen)
        self._udp_tail(out, pos, plen, data)
        return self._hl + plen

    def _udp_tail(self, out, pos, plen, data):
        # The UDP length appears twice: pseudo-header and UDP header.
        ulen = 8 + plen
        UDP_TAIL.pack_into(out, pos + self._l4 + 4, ulen,
                            MOD - (self._base + 2 * ulen + data) % MOD)


def segment(buf, offset: int, length: int, out, pos: int = 0):
    """Splits the super-packet at buf[offset:offset+length] (vnet header
    first) into out, back to back from pos; yields (start, length) of each
    IP packet. Convenience over `Splitter` for tests and slow paths."""
    sp = Splitter()
    count = sp.load(buf, offset, length)
    for i in range(count):
        n = sp.write(i, out, pos)
        yield pos, n
        pos += n
