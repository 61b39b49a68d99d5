"""The virtio_net_hdr that a TUN opened with IFF_VNET_HDR puts before each packet,
and the packet constants the splitter and the coalescer share."""

import struct

# virtio_net_hdr without num_buffers (TUNSETVNETHDRSZ 10): flags u8,
# gso_type u8, hdr_len, gso_size, csum_start, csum_offset (u16 each, in the
# host's byte order for a legacy little-endian virtio header).
VNET_HDR_LEN = 10
VNET = struct.Struct("<BBHHHH")

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never negotiated, rejected
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

PROTO_TCP = 6
PROTO_UDP = 17

# Largest IP packet a super-packet may become (IPv4 total length field).
MAX_SUPER_PACKET = 65535

# Fields rewritten per segment, each in one pack_into.
IP4_TAIL = struct.Struct(">HHHHH")  # at ip+2: total len, id, frag, ttl|proto, csum
IP6_PLEN = struct.Struct(">H")  # at ip+4: payload length
TCP_TAIL = struct.Struct(">IIHHH")  # at tcp+4: seq, ack, off|flags, window, csum
UDP_TAIL = struct.Struct(">HH")  # at udp+4: length, csum
U16 = struct.Struct(">H")


class OffloadError(ValueError):
    """A super-packet from the TUN cannot be split; drop it."""


def parse_vnet(buf, offset: int = 0) -> tuple:
    """(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)."""
    return VNET.unpack_from(buf, offset)


def pack_vnet(buf, offset: int, flags: int = 0, gso_type: int = GSO_NONE,
              hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
              csum_offset: int = 0) -> None:
    VNET.pack_into(buf, offset, flags, gso_type, hdr_len, gso_size,
                   csum_start, csum_offset)
