"""A reader of the packets that nftables `log group N` rules send (nfnetlink_log), with a stdlib socket.

Rules kept here:
- one socket per group, bound with the two configuration messages libnetfilter_log sends (BIND the
  group, copy up to `copy_range` bytes of each packet), each acknowledged; a group another program
  already listens on is a clear error;
- only the headers matter (addresses, protocol, ports): the caller's rule sets a small snaplen;
- a malformed or truncated message is skipped, never raised: the kernel is the only sender, but a
  reader must not die on what it does not understand;
- ENOBUFS (the kernel dropped messages because we were slow) is counted, not fatal.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass

from .targets import IPAddress

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")
_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}
_V6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped to find the transport


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    src: IPAddress
    dst: IPAddress
    proto: str  # tcp, udp, icmp, ipv6-icmp, or the protocol number
    sport: int | None
    dport: int | None
    indev: int | None
    outdev: int | None


def parse_ip(payload: bytes) -> tuple[IPAddress, IPAddress, str, int | None, int | None] | None:
    """(src, dst, proto, sport, dport) from the start of an IP packet, or None if it is not one."""
    if len(payload) < 20:
        return None
    version = payload[0] >> 4
    if version == 4:
        ihl = (payload[0] & 0x0F) * 4
        if ihl < 20:
            return None
        proto = payload[9]
        src, dst = ipaddress.IPv4Address(payload[12:16]), ipaddress.IPv4Address(payload[16:20])
        fragment_offset = struct.unpack_from("!H", payload, 6)[0] & 0x1FFF
        offset = ihl if fragment_offset == 0 else None
    elif version == 6 and len(payload) >= 40:
        proto = payload[6]
        src, dst = ipaddress.IPv6Address(payload[8:24]), ipaddress.IPv6Address(payload[24:40])
        offset = 40
        while proto in _V6_EXTENSIONS and offset + 2 <= len(payload):
            proto, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
        if proto == 44:  # fragment header: ports only in the first fragment
            if offset + 8 > len(payload):
                return None
            first = struct.unpack_from("!H", payload, offset + 2)[0] & 0xFFF8 == 0
            proto, offset = payload[offset], (offset + 8 if first else None)
    else:
        return None
    name = _PROTOS.get(proto, str(proto))
    sport = dport = None
    if name in ("tcp", "udp") and offset is not None and offset + 4 <= len(payload):
        sport, dport = struct.unpack_from("!HH", payload, offset)
    return src, dst, name, sport, dport


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4 or start + length > end:
            break
        out[kind & 0x7FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def _ifindex(attrs: dict[int, bytes], kind: int) -> int | None:
    value = attrs.get(kind, b"")
    return struct.unpack(">I", value)[0] if len(value) == 4 else None


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class NflogSocket:
    """Receives the packets logged to one NFLOG group in the current network namespace."""

    def __init__(self, group: int, copy_range: int = 128, rcvbuf: int = 1 << 20) -> None:
        if not 0 <= group <= 65535:
            raise ValueError(f"NFLOG group {group} out of range (0-65535)")
        self.group = group
        self.lost = 0
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 0))
            self._config(_nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)))
            self._config(_nla(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0)))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _config(self, attrs: bytes) -> None:
        self._seq += 1
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(self.group)) + attrs
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            length, kind, _, seq, _ = _NLMSG.unpack_from(data)
            if kind == NLMSG_ERROR and seq == self._seq:
                code = -struct.unpack_from("=i", data, _NLMSG.size)[0]
                if code == errno.EBUSY:
                    raise OSError(code, f"NFLOG group {self.group} is already in use by another program")
                if code:
                    raise OSError(code, f"NFLOG group {self.group}: {os.strerror(code)}")
                return

    def read(self, timeout: float | None = None) -> list[LoggedPacket]:
        """The packets of one receive (possibly several messages); [] after TIMEOUT seconds."""
        if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
            return []
        try:
            data = self.sock.recv(1 << 17)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.lost += 1
                return []
            raise
        return list(self.parse(data))

    @staticmethod
    def parse(data: bytes):
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
            if length < _NLMSG.size or offset + length > len(data):
                return
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                attrs = _attrs(data, offset + _NLMSG.size + _NFGEN.size, offset + length)
                ip = parse_ip(attrs.get(NFULA_PAYLOAD, b""))
                if ip is not None:
                    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
                    yield LoggedPacket(prefix, *ip, _ifindex(attrs, NFULA_IFINDEX_INDEV),
                                       _ifindex(attrs, NFULA_IFINDEX_OUTDEV))
            offset += (length + 3) & ~3

    def close(self) -> None:
        try:
            self._config(_nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_UNBIND)))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "NflogSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
