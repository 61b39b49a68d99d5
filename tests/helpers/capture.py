"""What leaves a namespace through one link, captured in full: the proof that nothing leaked.

    cap = Capture(ns, "c-r").start()     # opened before the tunnel comes up
    ...
    out = cap.stop()                     # every outgoing frame, summarised
    assert all(p.udp_to in allowed for p in out if p.routable)

Rules kept here: a packet socket (ETH_P_ALL, the kernel's copy of every
frame, both directions) read by a thread of its own into a large buffer, so
nothing is lost while a test waits; only frames the link sends are kept
(PACKET_OUTGOING); the kernel's count of frames it could not hand us is
returned with them, and a capture that lost any is no proof (`stop` raises).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass

from tests.helpers.netns import Netns

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0003, 0x0800, 0x86DD, 0x0806
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_RCVBUFFORCE = 33  # not named by the socket module


@dataclass(frozen=True)
class Frame:
    """One outgoing frame: its ethertype, and for IP its addresses, protocol and UDP ports."""

    ethertype: int
    src: str | None = None
    dst: str | None = None
    proto: int | None = None  # IPv4 protocol / IPv6 next header
    sport: int | None = None
    dport: int | None = None

    @property
    def routable(self) -> bool:
        """Could this frame carry something off the link? (IPv6 link-local control traffic cannot.)"""
        if self.ethertype == ETH_P_IP:
            return True
        if self.ethertype == ETH_P_IPV6:
            dst = ipaddress.IPv6Address(self.dst)
            return not (dst.is_link_local or (dst.is_multicast and int(dst) >> 112 == 0xFF02))
        return False  # ARP and other link protocols

    @property
    def udp_to(self) -> tuple[str, int] | None:
        return (self.dst, self.dport) if self.proto == 17 else None


def _summary(ethertype: int, pkt: bytes) -> Frame:
    if ethertype == ETH_P_IP and len(pkt) >= 20:
        ihl = (pkt[0] & 15) * 4
        proto = pkt[9]
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        if proto == 17 and len(pkt) >= ihl + 4:
            sport, dport = struct.unpack_from(">HH", pkt, ihl)
            return Frame(ethertype, src, dst, proto, sport, dport)
        return Frame(ethertype, src, dst, proto)
    if ethertype == ETH_P_IPV6 and len(pkt) >= 40:
        src = socket.inet_ntop(socket.AF_INET6, pkt[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, pkt[24:40])
        proto = pkt[6]
        if proto == 17 and len(pkt) >= 44:
            sport, dport = struct.unpack_from(">HH", pkt, 40)
            return Frame(ethertype, src, dst, proto, sport, dport)
        return Frame(ethertype, src, dst, proto)
    return Frame(ethertype)


class Capture:
    def __init__(self, ns: Netns, ifname: str):
        with ns.entered():  # the socket stays in NS's network namespace
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                                      socket.htons(ETH_P_ALL))
            self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        self.sock.settimeout(0.1)
        self.frames: list[Frame] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="capture", daemon=True)

    def start(self) -> "Capture":
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                pkt, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                self.frames.append(_summary(addr[1], pkt))

    def stop(self) -> list[Frame]:
        """Every outgoing frame since start; raises if the kernel dropped any before we read it."""
        self._stop.set()
        self._thread.join(5)
        try:
            _, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        finally:
            self.sock.close()
        if drops:
            raise AssertionError(f"the capture lost {drops} frame(s): it proves nothing")
        return self.frames
