"""Echo servers and reachability probes run inside namespaces, from the test process itself.

Sockets are created inside a namespace (`Netns.entered()` moves only the
calling thread) and keep to it afterwards, so servers are threads of the
test and probes need no subprocess. A probe waits PROBE_TIMEOUT for an
answer (a denied TCP SYN or UDP datagram simply gets none); a probe that
must succeed is given REACH_TIMEOUT, so a busy machine does not fail it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from tests.netns import Netns

PROBE_TIMEOUT = 1.0  # how long a probe waits before it calls the destination unreachable
REACH_TIMEOUT = 5.0  # how long a probe that must succeed may take on a loaded machine
SO_RCVBUFFORCE = 33  # Linux; Python's socket module does not name it (root may exceed rmem_max)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class EchoServers:
    """TCP and UDP echo on PORTS of every address of NS (dual-stack sockets); TCP echoes line by line."""

    def __init__(self, ns: Netns, tcp: Iterable[int] = (), udp: Iterable[int] = ()) -> None:
        self.listeners: list[socket.socket] = []
        self.conns: list[socket.socket] = []
        self.received: dict[tuple, int] = {}  # (peer address, local port) -> bytes received over TCP
        self.datagrams: dict[tuple, int] = {}  # (peer address, local port) -> UDP datagrams received
        self._stop = threading.Event()
        with ns.entered():
            for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
                for port in ports:
                    s = socket.socket(socket.AF_INET6, kind)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("::", port))
                    if kind == socket.SOCK_STREAM:
                        s.listen(64)
                    else:  # room for seconds of datagrams: a busy machine must not drop what we count
                        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                    self.listeners.append(s)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.listeners, [], [], 0.1)
            for s in ready:
                if s.type == socket.SOCK_STREAM:
                    try:
                        conn, peer = s.accept()
                    except OSError:
                        continue
                    self.conns.append(conn)
                    threading.Thread(target=self._echo, args=(conn, peer, s.getsockname()[1]), daemon=True).start()
                else:
                    with contextlib.suppress(OSError):
                        data, peer = s.recvfrom(2048)
                        key = (peer[0].removeprefix("::ffff:"), s.getsockname()[1])
                        self.datagrams[key] = self.datagrams.get(key, 0) + 1
                        s.sendto(data, peer)

    def _echo(self, conn: socket.socket, peer: tuple, port: int) -> None:
        key = (peer[0].removeprefix("::ffff:"), port)
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = conn.recv(4096)
                if not data:
                    return
                self.received[key] = self.received.get(key, 0) + len(data)
                conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for s in self.listeners + self.conns:
            with contextlib.suppress(OSError):
                s.close()


def tcp_connect(ns: Netns, dst: str, port: int, timeout: float = PROBE_TIMEOUT) -> socket.socket | None:
    with ns.entered():
        s = socket.socket(_family(dst), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
        return s
    except OSError:
        s.close()
        return None


def tcp_reaches(ns: Netns, dst: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    s = tcp_connect(ns, dst, port, timeout)
    if s is None:
        return False
    with s:
        return echoes(s, timeout)


def echoes(s: socket.socket, timeout: float = PROBE_TIMEOUT) -> bool:
    """Send a line on a connected TCP socket and wait for its echo."""
    s.settimeout(timeout)
    try:
        s.sendall(b"ping\n")
        return s.recv(16) == b"ping\n"
    except OSError:
        return False


def udp_reaches(ns: Netns, dst: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    with ns.entered():
        s = socket.socket(_family(dst), socket.SOCK_DGRAM)
    with s:
        s.settimeout(timeout)
        try:
            s.sendto(b"probe", (dst, port))
            data, _ = s.recvfrom(64)
            return data == b"probe"
        except OSError:
            return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def pings(ns: Netns, dst: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """One ICMP(v6) echo request; True if its reply comes back (raw socket, we are root)."""
    v6 = ":" in dst
    with ns.entered():
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = int.from_bytes(os.urandom(2), "big")
    request, reply = (128, 129) if v6 else (8, 0)
    header = struct.pack("!BBHHH", request, 0, 0, ident, 1) + b"policy-probe"
    if not v6:  # the kernel fills in the ICMPv6 checksum itself
        header = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
    with s:
        s.sendto(header, (dst, 0))
        deadline = timeout
        s.settimeout(deadline)
        try:
            while True:
                data, peer = s.recvfrom(2048)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
                if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return True
        except OSError:
            return False


def probe(ns: Netns, dst: str, port: int | None, proto: str, timeout: float = PROBE_TIMEOUT) -> bool:
    if proto == "tcp":
        return tcp_reaches(ns, dst, port, timeout)
    if proto == "udp":
        return udp_reaches(ns, dst, port, timeout)
    return pings(ns, dst, timeout)


def probe_all(cases: list[tuple[Netns, str, int | None, str]], expect: list[bool] | None = None,
              workers: int = 24) -> list[bool]:
    """Many probes at once (each waits out PROBE_TIMEOUT when denied). Given EXPECT, the probes
    that found no way where one is expected try again with REACH_TIMEOUT before they count."""
    with ThreadPoolExecutor(workers) as pool:
        seen = list(pool.map(lambda c: probe(*c), cases))
        again = [i for i, ok in enumerate(seen) if expect and expect[i] and not ok]
        for i, ok in zip(again, pool.map(lambda i: probe(*cases[i], timeout=REACH_TIMEOUT), again)):
            seen[i] = ok
    return seen
