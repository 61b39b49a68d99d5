"""Packet surgery for TUN offloads: split TSO/USO super-packets, merge TCP
segments back into super-packets (GRO), over caller buffers.

A TUN opened with IFF_VNET_HDR and TUNSETOFFLOAD hands us, behind a 10-byte
virtio_net_hdr, TCP super-packets of up to 64 KiB whose checksum is only
partial, and accepts the same from us. WireGuard carries plain IP packets, so
the sending side splits super-packets into wire-sized packets with complete
checksums (`Splitter`) and the receiving side merges decrypted segments of
one TCP flow back into super-packets (`Coalescer`): one TUN write and one
trip through the kernel's TCP receive path for ~40 packets.

Rules this module keeps:
- Every packet it writes for the wire is a valid IP packet for any receiver:
  IPv4 header checksum, IPv4 total length / IPv6 payload length and the
  complete TCP/UDP checksum (pseudo-header included) are computed, never
  left partial. Checksums use the big-integer trick of `tunnel.checksum`.
- The hot paths allocate no per-packet objects beyond the memoryview slices
  they copy through; state lives in preallocated objects reused per call.
- Header lengths come from the packets themselves, not from the vnet
  header's hdr_len (the kernel fills it loosely). A super-packet from the
  local kernel that makes no sense raises `OffloadError`, which the caller
  drops; nothing else is raised for bad input.
- Incoming (decrypted) packets are merged only when their IPv4 header
  checksum and TCP checksum verify, as the kernel's own GRO requires. The
  peer authenticated them, but a buggy peer's bad checksum must not be
  blessed by our NEEDS_CSUM: failing packets pass through with flags 0 so
  the kernel checks them and drops them itself. A packet that verified and
  is written alone carries DATA_VALID, so the kernel does not sum it again.
  wireguard-go verifies before merging too. `Coalescer(verify=False)` trusts
  the authenticated peer as kernel WireGuard does (it marks decrypted
  packets CHECKSUM_UNNECESSARY); it saves one big-int sum per packet
  (~2 us here) and then writes single packets with flags 0.
"""

from .coalescer import Coalescer
from .splitter import Splitter, segment
from .vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    MAX_SUPER_PACKET,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VNET,
    VNET_HDR_LEN,
    OffloadError,
    pack_vnet,
    parse_vnet,
)

__all__ = [
    "Coalescer", "Splitter", "segment", "OffloadError", "parse_vnet", "pack_vnet", "VNET", "VNET_HDR_LEN",
    "F_DATA_VALID", "F_NEEDS_CSUM", "GSO_ECN", "GSO_NONE", "GSO_TCPV4", "GSO_TCPV6", "GSO_UDP", "GSO_UDP_L4",
    "MAX_SUPER_PACKET", "PROTO_TCP", "PROTO_UDP", "TCP_ACK", "TCP_CWR", "TCP_ECE", "TCP_FIN", "TCP_PSH",
    "TCP_RST", "TCP_SYN", "TCP_URG",
]
