"""Merging decrypted TCP segments of one flow back into super-packets for one
TUN write each (GRO; the receiving side; see tunnel/offload/__init__.py)."""

from ..checksum import F1, F2, F3, F4, M1, M2, M3, M4, MOD, raw_sum, reduce
from .vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_SUPER_PACKET,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    VNET,
    VNET_HDR_LEN,
    TCP_TAIL,
    U16,
)

# The kernel's UDP_MAX_SEGMENTS is 128 (64 before 5.x): stay under both.
UDP_MAX_SEGMENTS = 64


class _Merge:
    """One super-packet being built for one TCP or UDP flow, in its own buffer."""

    __slots__ = ("buf", "view", "end", "l4", "hdr", "next_seq", "mss",
                 "count", "ack", "word", "window", "opts", "ipsig", "psh",
                 "v4", "valid", "udp")

    def __init__(self):
        self.buf = bytearray(VNET_HDR_LEN + MAX_SUPER_PACKET)
        self.view = memoryview(self.buf)


class Coalescer:
    """GRO for decrypted packets: merges in-order TCP segments of one flow.

    `add(pkt)` takes one IP packet (bytes-like; a trailing WireGuard zero
    padding is trimmed by the IP length). `flush()` returns a list of
    memoryviews, each a vnet header followed by an IP packet, ready for
    `Tun.write`; they stay valid until the next `flush()`.

    Segments merge when, as in the kernel's tcp_gro_receive: same addresses
    and ports; IPv4 with a 20-byte header, no fragmentation, equal DF, TOS
    and TTL (IPv6: no extension header, equal first word and hop limit);
    only ACK or ACK|PSH set; equal ack number, header length, window and
    options bytes; seq continues the previous segment; every segment has the
    first one's payload size except a smaller last one; PSH or a smaller
    segment ends the super-packet; at most 65535 bytes of IP packet.
    A merged packet goes out as gso_type TCPV4/TCPV6 with NEEDS_CSUM and
    the pseudo-header sum in the TCP checksum field (CHECKSUM_PARTIAL).

    With `uso` (the TUN accepted TUN_F_USO4/6: Linux 6.2+), UDP datagrams
    of one flow merge too, as the kernel's UDP GRO does: same addresses and
    ports, the IPv4/IPv6 conditions above, a non-zero UDP checksum (and a
    valid one when verifying), every datagram the first one's payload size
    but a smaller last one, at most UDP_MAX_SEGMENTS of them. They go out
    as gso_type UDP_L4 with NEEDS_CSUM; the kernel cuts them back into the
    same datagrams (IPv4 IDs counting up from the first one's) in one
    write, which saves a system call and a trip through the stack per
    datagram on a UDP stream (a video call, QUIC, iperf3 -u).
    Anything else passes through unchanged, in order within its flow.
    """

    def __init__(self, verify: bool = True, max_flows: int = 64,
                 arena_size: int = 1 << 20, uso: bool = False):
        self.verify = verify
        self.uso = uso
        self.max_flows = max_flows
        self._flows = {}
        self._free = []
        self._busy = []  # handed out by the last flush()
        self._done = []  # finished since the last flush()
        self._out = []
        self._arenas = [bytearray(arena_size), bytearray(arena_size)]
        self._arena = memoryview(self._arenas[0])
        self._arena_pos = 0
        self._arena_index = 0
        # Counters for the caller's metrics.
        self.merged_packets = 0
        self.super_packets = 0
        self.bad_checksums = 0

    def add(self, pkt) -> None:
        n = len(pkt)
        if n < 40:
            self._pass(pkt, n, 0, None)
            return
        b0 = pkt[0]
        if b0 == 0x45:
            total = (pkt[2] << 8) | pkt[3]
            if total > n or total < 40:
                self._pass(pkt, n, 0, None)
                return
            n = total
            # Anything but DF in the fragment word (MF, offset, reserved).
            if pkt[6] & 0xBF or pkt[7]:
                self._pass(pkt, n, 0, None)
                return
            if pkt[9] != PROTO_TCP:
                if pkt[9] == PROTO_UDP and self.uso:
                    self._add_udp(pkt, n, 20, (pkt[1] << 16) | (pkt[6] << 8) | pkt[8])
                else:
                    self._pass(pkt, n, 0, None)
                return
            l4 = 20
            key = bytes(pkt[12:24])
            if self.verify:
                x = int.from_bytes(pkt[12:n], "big")
                if n & 1:
                    x <<= 8
                x = (x >> F1) + (x & M1)
                x = (x >> F2) + (x & M2)
                x = (x >> F3) + (x & M3)
                x = (x >> F4) + (x & M4)
                if (x + PROTO_TCP + n - 20) % MOD or \
                        int.from_bytes(pkt[0:20], "big") % MOD:
                    self.bad_checksums += 1
                    self._close(key)
                    self._pass(pkt, n, 0, None)
                    return
            ipsig = (pkt[1] << 16) | (pkt[6] << 8) | pkt[8]
        elif b0 >> 4 == 6:
            total = 40 + ((pkt[4] << 8) | pkt[5])
            if total > n or total < 60:
                self._pass(pkt, n, 0, None)
                return
            n = total
            if pkt[6] != PROTO_TCP:
                if pkt[6] == PROTO_UDP and self.uso:
                    self._add_udp(pkt, n, 40, (int.from_bytes(pkt[0:4], "big") << 8) | pkt[7])
                else:
                    self._pass(pkt, n, 0, None)
                return
            l4 = 40
            key = bytes(pkt[8:44])
            if self.verify:
                x = int.from_bytes(pkt[8:n], "big")
                if n & 1:
                    x <<= 8
                x = (x >> F1) + (x & M1)
                x = (x >> F2) + (x & M2)
                x = (x >> F3) + (x & M3)
                x = (x >> F4) + (x & M4)
                bad = (x + PROTO_TCP + n - 40) % MOD
            else:
                bad = 0
            if bad:
                self.bad_checksums += 1
                self._close(key)
                self._pass(pkt, n, 0, None)
                return
            ipsig = (int.from_bytes(pkt[0:4], "big") << 8) | pkt[7]
        else:
            self._pass(pkt, n, 0, None)
            return
        valid = F_DATA_VALID if self.verify else 0
        seq, ack, word, window, _ = TCP_TAIL.unpack_from(pkt, l4 + 4)
        thl = (word >> 12) * 4
        hdr = l4 + thl
        plen = n - hdr
        flags = word & 0xFF
        if thl < 20 or plen <= 0 or (flags | TCP_PSH) != (TCP_ACK | TCP_PSH):
            self._pass(pkt, n, valid, key)
            return
        opts = bytes(pkt[l4 + 20:hdr]) if thl > 20 else b""
        flows = self._flows
        m = flows.get(key)
        if m is not None:
            if (seq == m.next_seq and ack == m.ack and word | TCP_PSH == m.word
                    and window == m.window and ipsig == m.ipsig
                    and plen <= m.mss and opts == m.opts
                    and m.end + plen <= VNET_HDR_LEN + MAX_SUPER_PACKET):
                e = m.end
                m.view[e:e + plen] = pkt[hdr:n]
                m.end = e + plen
                m.next_seq = (seq + plen) & 0xFFFFFFFF
                m.count += 1
                if flags & TCP_PSH or plen < m.mss:
                    m.psh = flags & TCP_PSH
                    del flows[key]
                    self._finish(m)
                return
            del flows[key]
            self._finish(m)
        if flags & TCP_PSH or len(flows) >= self.max_flows:
            self._pass(pkt, n, valid, None)
            return
        m = self._start(key, pkt, n, l4, hdr, plen, ipsig, valid, False)
        m.next_seq = (seq + plen) & 0xFFFFFFFF
        m.ack = ack
        m.word = word | TCP_PSH
        m.window = window
        m.opts = opts
        m.psh = 0

    def _add_udp(self, pkt, n, l4, ipsig):
        """One UDP datagram (IP header checked by add): merge it into its flow's super-packet, or start one."""
        hdr = l4 + 8
        plen = n - hdr
        if plen <= 0:
            self._pass(pkt, n, 0, None)
            return
        addr = 12 if l4 == 20 else 8  # the addresses, then the ports
        # UDP and TCP flows of the same addresses and ports are different flows.
        key = bytes(pkt[addr:l4 + 4]) + b"u"
        # The UDP length must match the IP length; a zero checksum (IPv4: none) is left to the kernel.
        if ((pkt[l4 + 4] << 8) | pkt[l4 + 5]) != n - l4 or not (pkt[l4 + 6] or pkt[l4 + 7]):
            self._pass(pkt, n, 0, key)
            return
        valid = 0
        if self.verify:
            if reduce(raw_sum(pkt[addr:n]) + PROTO_UDP + n - l4) or (
                    l4 == 20 and int.from_bytes(pkt[0:20], "big") % MOD):
                self.bad_checksums += 1
                self._close(key)
                self._pass(pkt, n, 0, None)
                return
            valid = F_DATA_VALID
        flows = self._flows
        m = flows.get(key)
        if m is not None:
            if (ipsig == m.ipsig and plen <= m.mss and m.count < UDP_MAX_SEGMENTS
                    and m.end + plen <= VNET_HDR_LEN + MAX_SUPER_PACKET):
                e = m.end
                m.view[e:e + plen] = pkt[hdr:n]
                m.end = e + plen
                m.count += 1
                if plen < m.mss:
                    del flows[key]
                    self._finish(m)
                return
            del flows[key]
            self._finish(m)
        if len(flows) >= self.max_flows:
            self._pass(pkt, n, valid, None)
            return
        self._start(key, pkt, n, l4, hdr, plen, ipsig, valid, True)

    def _start(self, key, pkt, n, l4, hdr, plen, ipsig, valid, udp) -> _Merge:
        """A new super-packet for the flow KEY, from its first packet (TCP's own fields are the caller's)."""
        m = self._free.pop() if self._free else _Merge()
        m.view[VNET_HDR_LEN:VNET_HDR_LEN + n] = pkt[:n]
        m.end = VNET_HDR_LEN + n
        m.l4 = l4
        m.hdr = hdr
        m.mss = plen
        m.count = 1
        m.ipsig = ipsig
        m.v4 = l4 == 20
        m.valid = valid
        m.udp = udp
        self._flows[key] = m
        return m

    def flush(self) -> list:
        """Closes every open super-packet; returns all output since the last
        flush (order is kept within each flow)."""
        for m in self._flows.values():
            self._finish(m)
        self._flows.clear()
        out = self._out
        self._out = []
        # Buffers handed out by the previous flush are free again now.
        self._free.extend(self._busy)
        self._busy, self._done = self._done, []
        self._arena_index ^= 1
        self._arena = memoryview(self._arenas[self._arena_index])
        self._arena_pos = 0
        return out

    # -- helpers, once per pass-through packet or per super-packet ----------

    def _close(self, key):
        m = self._flows.pop(key, None)
        if m is not None:
            self._finish(m)

    def _pass(self, pkt, n, flags, key):
        if key is not None:
            self._close(key)
        pos = self._arena_pos
        end = pos + VNET_HDR_LEN + n
        arena = self._arena
        if end > len(arena):
            # Rare: more pass-through bytes than the arena holds between two
            # flushes. Earlier views keep the old arena alive.
            size = max(len(arena) * 2, VNET_HDR_LEN + n)
            self._arenas[self._arena_index] = bytearray(size)
            arena = self._arena = memoryview(self._arenas[self._arena_index])
            pos = 0
            end = VNET_HDR_LEN + n
        VNET.pack_into(arena, pos, flags, GSO_NONE, 0, 0, 0, 0)
        arena[pos + VNET_HDR_LEN:end] = pkt[:n]
        self._arena_pos = end
        self._out.append(arena[pos:end])

    def _finish(self, m):
        v = m.view
        ip = VNET_HDR_LEN
        total = m.end - ip
        self._done.append(m)
        if m.count == 1:
            VNET.pack_into(v, 0, m.valid, GSO_NONE, 0, 0, 0, 0)
            self._out.append(v[:m.end])
            return
        self.merged_packets += m.count
        self.super_packets += 1
        l4 = m.l4
        at = ip + l4  # the TCP or UDP header
        l4len = total - l4
        proto = PROTO_UDP if m.udp else PROTO_TCP
        if m.v4:
            U16.pack_into(v, ip + 2, total)
            U16.pack_into(v, ip + 10, 0)
            U16.pack_into(v, ip + 10, MOD - raw_sum(v[ip:ip + 20]) % MOD)
            pseudo = raw_sum(v[ip + 12:ip + 20]) + proto + l4len
        else:
            U16.pack_into(v, ip + 4, l4len)
            pseudo = raw_sum(v[ip + 8:ip + 40]) + proto + l4len
        # CHECKSUM_PARTIAL: the field holds the folded, uncomplemented
        # pseudo-header sum; whoever completes it sums from csum_start.
        if m.udp:
            U16.pack_into(v, at + 4, l4len)  # the UDP length: the whole train's
            U16.pack_into(v, at + 6, pseudo % MOD or MOD)
            VNET.pack_into(v, 0, F_NEEDS_CSUM, GSO_UDP_L4, m.hdr, m.mss, l4, 6)
        else:
            if m.psh:
                v[at + 13] |= TCP_PSH
            U16.pack_into(v, at + 16, pseudo % MOD or MOD)
            VNET.pack_into(v, 0, F_NEEDS_CSUM, GSO_TCPV4 if m.v4 else GSO_TCPV6, m.hdr, m.mss, l4, 16)
        self._out.append(v[:m.end])
