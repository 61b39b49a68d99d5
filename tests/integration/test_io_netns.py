"""tunnel.tun, tunnel.offload and tunnel.udp against the real kernel.

TUN offloads, both ways, with our own relay standing in for the tunnel:

    [a] ta 10.96.0.1/24 fd96::1/64          [b] tb 10.96.0.2/24 fd96::2/64
          |                                       |
          +---- Relay (this process): read a super-packet from one TUN,
                Splitter -> wire packets (checked against the reference
                checksum for the first ones), Coalescer -> super-packets
                written to the other TUN with NEEDS_CSUM.

A TCP transfer each way (SHA-256 compared) proves that the kernel gives us
TSO super-packets, that our split packets are valid (the receiving kernel
checks what the Coalescer could not merge, and the Coalescer itself only
merges packets whose checksums verify), and that our merged super-packets
are accepted and delivered intact.

UDP GSO/GRO over a veth pair:

    [u] u-v 10.97.0.1/24 fd97::1/64 ---- v-u 10.97.0.2/24 fd97::2/64 [v]

Sockets and TUNs are opened by a thread that entered the namespace, so
nothing is created in the host's namespace.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import select
import socket
import threading

import pytest

from tests.helpers.packets import check_l4, ip4, ip6, udp_dgram
from tunnel import udp
from tunnel.offload import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, Coalescer, Splitter, parse_vnet
from tunnel.tun import READ_BUFFER_SIZE, TUN_F_TSO4, TUN_F_TSO6, Tun

PREFIX = "io"


class Relay:
    """Moves packets between two TUNs as the tunnel's data path will.

    With offloads, each packet read is split by a Splitter and the pieces
    are merged by the other side's Coalescer, flushed after each drain.
    Without, packets are copied as they are. Runs in a thread until stop().
    """

    def __init__(self, left: Tun, right: Tun, check: int = 0, verify: bool = True):
        self.tuns = (left, right)
        self.offload = left.vnet_hdr and right.vnet_hdr
        self.check = check  # super-packets to verify with the reference
        self.gso_reads: dict[int, int] = {}
        self.segments = 0
        self.written = 0
        self.errors: list[BaseException] = []
        self.coalescers = (Coalescer(verify=verify), Coalescer(verify=verify))
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Relay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
            self._thread.join(10)
            os.close(self._wake_w)
            os.close(self._wake_r)
            self._wake_w = -1

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # reported by the test, not lost in a thread
            self.errors.append(e)

    def _loop(self) -> None:
        ep = select.epoll()
        fds = {t.fd: i for i, t in enumerate(self.tuns)}
        for fd in fds:
            ep.register(fd, select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        buf = bytearray(READ_BUFFER_SIZE)
        view = memoryview(buf)
        out = bytearray(READ_BUFFER_SIZE)
        oview = memoryview(out)
        sp = Splitter()
        try:
            while True:
                for fd, _ in ep.poll(1.0):
                    if fd == self._wake_r:
                        return
                    i = fds[fd]
                    if self.offload:
                        self._drain_offload(self.tuns[i], self.tuns[1 - i],
                                            self.coalescers[1 - i], sp, view, oview)
                    else:
                        self._drain_plain(self.tuns[i], self.tuns[1 - i], view)
        finally:
            ep.close()

    def _drain_plain(self, src: Tun, dst: Tun, view) -> None:
        for _ in range(256):
            try:
                n = src.read_into(view)
            except BlockingIOError:
                return
            dst.write(view[:n])
            self.segments += 1
            self.written += 1

    def _drain_offload(self, src: Tun, dst: Tun, co: Coalescer, sp: Splitter, view, oview) -> None:
        for _ in range(64):
            try:
                n = src.read_into(view)
            except BlockingIOError:
                break
            count = sp.load(view, 0, n)
            gso_type = view[1]
            self.gso_reads[gso_type] = self.gso_reads.get(gso_type, 0) + 1
            checking = self.check > 0 and gso_type != GSO_NONE
            for k in range(count):
                m = sp.write(k, oview, 0)
                if checking:
                    check_l4(bytes(oview[:m]))
                co.add(oview[:m])
            if checking:
                self.check -= 1
            self.segments += count
        for pkt in co.flush():
            dst.write(pkt)
            self.written += 1


def tun_in(ns, name: str, addrs: list[str], **kw) -> Tun:
    with ns.entered():
        t = Tun(name, **kw)
    for a in addrs:
        ns.addr(t.name, a)
    ns.link_up(t.name)
    return t


def socket_in(ns, family: int) -> socket.socket:
    with ns.entered():
        return socket.socket(family, socket.SOCK_STREAM)


def transfer(client: socket.socket, server: socket.socket, data: bytes, results: dict, key: str):
    """Sends data over a fresh connection; records the SHA-256 received."""
    def receive():
        conn, _ = server.accept()
        with conn:
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
            results[key] = h.hexdigest()

    t = threading.Thread(target=receive)
    t.start()
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)
    t.join(120)
    client.close()
    server.close()


@pytest.fixture
def tun_pair(netns_factory):
    topo = netns_factory(PREFIX)
    a, b = topo.netns("a"), topo.netns("b")
    short = os.getpid() % 100000
    tuns = []

    def make(**kw):
        tuns.append(tun_in(a, f"{PREFIX}{short}a", ["10.96.0.1/24", "fd96::1/64"], **kw))
        tuns.append(tun_in(b, f"{PREFIX}{short}b", ["10.96.0.2/24", "fd96::2/64"], **kw))
        return a, b, tuns[0], tuns[1]

    yield make
    for t in tuns:
        t.close()


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def test_tcp_both_ways_through_split_and_coalesce(tun_pair, family):
    a, b, ta, tb = tun_pair()
    assert ta.offloads & TUN_F_TSO4 and ta.offloads & TUN_F_TSO6
    v6 = family == socket.AF_INET6
    ip_a, ip_b = ("fd96::1", "fd96::2") if v6 else ("10.96.0.1", "10.96.0.2")
    rng = random.Random(7)
    to_b, to_a = rng.randbytes(24 << 20), rng.randbytes(6 << 20)
    srv_b, srv_a = socket_in(b, family), socket_in(a, family)
    srv_b.bind((ip_b, 5001))
    srv_a.bind((ip_a, 5002))
    srv_b.listen()
    srv_a.listen()
    cli_a, cli_b = socket_in(a, family), socket_in(b, family)
    results: dict[str, str] = {}
    with Relay(ta, tb, check=40) as relay:
        cli_a.connect((ip_b, 5001))
        cli_b.connect((ip_a, 5002))
        ab = threading.Thread(target=transfer, args=(cli_a, srv_b, to_b, results, "to_b"))
        ba = threading.Thread(target=transfer, args=(cli_b, srv_a, to_a, results, "to_a"))
        ab.start()
        ba.start()
        ab.join(180)
        ba.join(180)
    assert not relay.errors, relay.errors
    assert results == {"to_b": hashlib.sha256(to_b).hexdigest(),
                       "to_a": hashlib.sha256(to_a).hexdigest()}
    # (a) the kernel handed us TCP super-packets, and the first ones were
    # split into packets the reference checker accepts;
    assert relay.gso_reads.get(GSO_TCPV6 if v6 else GSO_TCPV4, 0) > 0
    assert relay.check == 0
    # (b) merged super-packets went back in, both ways, and were accepted.
    assert all(c.super_packets > 0 for c in relay.coalescers)
    assert all(c.bad_checksums == 0 for c in relay.coalescers)
    assert relay.segments > relay.written


@pytest.mark.netns
def test_tun_without_offloads_moves_plain_packets(tun_pair):
    a, b, ta, tb = tun_pair(vnet_hdr=False, offload=False)
    assert ta.offloads == 0
    data = random.Random(8).randbytes(2 << 20)
    srv, cli = socket_in(b, socket.AF_INET), socket_in(a, socket.AF_INET)
    srv.bind(("10.96.0.2", 5003))
    srv.listen()
    results: dict[str, str] = {}
    with Relay(ta, tb) as relay:
        cli.connect(("10.96.0.2", 5003))
        transfer(cli, srv, data, results, "x")
    assert not relay.errors, relay.errors
    assert results["x"] == hashlib.sha256(data).hexdigest()
    assert relay.segments == relay.written


@pytest.mark.netns
def test_malformed_vnet_header_is_refused_by_the_kernel(tun_pair):
    a, b, ta, tb = tun_pair()
    bad = bytes([1, GSO_TCPV4]) + bytes(8) + b"\x45" + bytes(59)  # gso_size 0
    with pytest.raises(OSError) as e:
        ta.write(bad)
    assert e.value.errno == errno.EINVAL


@pytest.mark.netns
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_udp_super_packets_are_cut_back_into_the_datagrams_by_the_kernel(tun_pair, v6):
    """What the receiving data plane writes for a UDP stream when the TUN takes USO (Linux 6.2+)."""
    a, b, ta, tb = tun_pair()
    assert tb.uso, "this kernel's TUN refused USO (Linux 6.2+ has it)"
    family = socket.AF_INET6 if v6 else socket.AF_INET
    here, there = ("fd96::2", "fd96::1") if v6 else ("10.96.0.2", "10.96.0.1")
    with b.entered():
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((here, 5004))
    sock.settimeout(5)
    src, dst = socket.inet_pton(family, there), socket.inet_pton(family, here)
    rng = random.Random(9)
    payloads = [rng.randbytes(1200) for _ in range(30)] + [rng.randbytes(333)]
    datagrams = []
    for i, payload in enumerate(payloads):
        seg = udp_dgram(src, dst, payload, sport=4444, dport=5004)
        datagrams.append(ip6(17, seg, src=src, dst=dst) if v6 else ip4(17, seg, ident=i, src=src, dst=dst))
    co = Coalescer(verify=True, uso=True)
    for d in datagrams:
        co.add(memoryview(d))
    writes = co.flush()
    assert [parse_vnet(w)[1] for w in writes] == [GSO_UDP_L4]
    with sock:
        for w in writes:
            tb.write(w)
        got = [sock.recvfrom(2048) for _ in payloads]
    assert [g[0] for g in got] == payloads
    assert {g[1][:2] for g in got} == {(there, 4444)}


@pytest.mark.netns
def test_udp_super_packets_are_forwarded_and_masqueraded_as_datagrams(tun_pair):
    """A gateway: what the TUN takes as UDP super-packets leaves by another link, NATed, as the datagrams."""
    a, b, ta, tb = tun_pair()
    c = b.topo.netns("c")
    out, _ = b.link_veth(c, "10.98.0.1/24", "10.98.0.2/24")
    b.enable_forwarding()
    b.run(["nft", "-f", "-"], input=f"""table ip {PREFIX}nat {{
        chain post {{ type nat hook postrouting priority srcnat; oifname "{out}" masquerade; }}
    }}""")
    with c.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("10.98.0.2", 5005))
    sock.settimeout(5)
    src, dst = socket.inet_aton("10.96.0.1"), socket.inet_aton("10.98.0.2")
    payloads = [bytes([i]) * 1000 for i in range(20)]
    co = Coalescer(verify=True, uso=True)
    for i, payload in enumerate(payloads):
        co.add(memoryview(ip4(17, udp_dgram(src, dst, payload, sport=4444, dport=5005), ident=i, src=src, dst=dst)))
    writes = co.flush()
    assert [parse_vnet(w)[1] for w in writes] == [GSO_UDP_L4]
    with sock:
        tb.write(writes[0])
        got = [sock.recvfrom(2048) for _ in payloads]
    assert [g[0] for g in got] == payloads
    assert {g[1][0] for g in got} == {"10.98.0.1"}


# -- UDP ------------------------------------------------------------------

@pytest.fixture
def veth_pair(netns_factory):
    topo = netns_factory(PREFIX)
    u, v = topo.netns("u"), topo.netns("v")
    u.link_veth(v, ["10.97.0.1/24", "fd97::1/64"], ["10.97.0.2/24", "fd97::2/64"])
    endpoints = []

    def endpoint(ns, **kw):
        kw.setdefault("filter", False)  # these tests carry arbitrary bytes, not WireGuard messages
        with ns.entered():
            ep = udp.UdpEndpoint(**kw)
        endpoints.append(ep)
        return ep

    yield u, v, endpoint
    for ep in endpoints:
        ep.close()


def receive_all(sock, total: int) -> tuple[bytes, list[tuple[int, int]], tuple]:
    """Reads until `total` bytes arrived; returns the bytes, (nbytes, segment)
    per receive call, and the last sender address."""
    buf = bytearray(udp.RECV_BUFFER_SIZE)
    got, calls, addr = bytearray(), [], None
    while len(got) < total:
        r, _, _ = select.select([sock], [], [], 10)
        assert r, "timed out waiting for datagrams"
        n, seg, addr = udp.recv_batch(sock, buf)
        calls.append((n, seg))
        got += buf[:n]
    return bytes(got), calls, addr


@pytest.mark.netns
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_udp_gso_train_arrives_as_gro_train(veth_pair, v6):
    u, v, endpoint = veth_pair
    eu, ev = endpoint(u, fwmark=0x51), endpoint(v)
    assert ev.gro and eu.sock6 is not None and ev.port == ev.sock6.getsockname()[1]
    dst = ("fd97::2", ev.port) if v6 else ("10.97.0.2", ev.port)
    sock = eu.socket_for(dst)
    seg = 1452
    data = random.Random(1).randbytes(seg * 40 + 100)  # 40 full datagrams and a short one
    udp.send_gso(sock, memoryview(data), seg, dst)
    got, calls, addr = receive_all(ev.socket_for(dst), len(data))
    assert got == data
    assert addr[1] == eu.port
    assert all(s == seg for n, s in calls if n > seg)
    assert any(n > seg for n, s in calls), f"no train was merged: {calls}"
    assert not udp.gso_refused(sock)


@pytest.mark.netns
def test_udp_trains_above_the_segment_limit_and_fallback(veth_pair):
    u, v, endpoint = veth_pair
    eu, ev = endpoint(u, v6=False), endpoint(v, v6=False, gro=False)
    assert eu.sock6 is None
    dst = ("10.97.0.2", ev.port)
    data = random.Random(2).randbytes(100 * 300)  # 300 datagrams: above UDP_MAX_SEGMENTS
    udp.send_gso(eu.sock4, memoryview(data), 100, dst)
    got, calls, _ = receive_all(ev.sock4, len(data))
    assert got == data and all(n <= 100 for n, _ in calls)  # no GRO asked: one by one
    udp.disable_gso(eu.sock4)
    udp.send_gso(eu.sock4, memoryview(data[:5000]), 1000, dst)
    got, calls, _ = receive_all(ev.sock4, 5000)
    assert got == data[:5000] and calls == [(1000, 1000)] * 5


# -- no namespace needed --------------------------------------------------

def test_normalize_and_socket_choice():
    assert udp.normalize(("::ffff:192.0.2.1", 5)) == ("192.0.2.1", 5)
    assert udp.normalize(("2001:db8::1", 5, 0, 0)) == ("2001:db8::1", 5, 0, 0)
    assert udp.normalize(("192.0.2.1", 5)) == ("192.0.2.1", 5)


class _RefusingSocket:
    """Stands in for a socket whose route cannot do UDP GSO."""

    def __init__(self):
        self.sent = []

    def sendmsg(self, bufs, anc, flags, addr):
        raise OSError(5, "Input/output error")  # EIO

    def sendto(self, data, addr):
        self.sent.append(bytes(data))

    __hash__ = object.__hash__


def test_send_gso_falls_back_once_refused_and_remembers():
    s = _RefusingSocket()
    udp.send_gso(s, memoryview(b"abcdefg"), 3, ("127.0.0.1", 9))
    assert s.sent == [b"abc", b"def", b"g"]
    assert udp.gso_refused(s)
    s.sendmsg = None  # would raise TypeError if called again
    udp.send_gso(s, memoryview(b"xyz"), 2, ("127.0.0.1", 9))
    assert s.sent[3:] == [b"xy", b"z"]
