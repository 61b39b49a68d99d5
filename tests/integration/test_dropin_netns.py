"""tunnel-wg through the behaviours the kernel's WireGuard selftest covers (selftests/wireguard/netns.sh),
in our own words and our own harness.

The main topology: both daemons start in [n0], so their UDP sockets live on
n0's loopback, and their interfaces are moved into [n1] and [n2] right after
(the "namespace as a container" of wireguard.com/netns):

    +-------- [n1] --------+    +------------------ [n0] ------------------+    +-------- [n2] --------+
    | w1  192.168.241.1/24 |    | lo 127.0.0.1 ::1                         |    | w2  192.168.241.2/24 |
    |     fd00::1/112      |    |  tunnel-wg w1 on :1    tunnel-wg w2 on :2|    |     fd00::2/112      |
    +----------------------+    +------------------------------------------+    +----------------------+

Other topologies are drawn where they are built (NAT through a router; two
namespaces joined by a veth). Everything is configured from outside with
`wg` and `ip`, as the tools that drive a userspace WireGuard do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time

import pytest

from tests.helpers.dropin import DropIn, link_stats, start_dropin
from tests.helpers.netns import Netns, genkey, pubkey

pytestmark = pytest.mark.netns

ADDR1, ADDR2 = "192.168.241.1", "192.168.241.2"
ADDR1_6, ADDR2_6 = "fd00::1", "fd00::2"
# The selftest's large MTU: 34816 - 1500 + 1420.
BIG_MTU = 34736


def keyfile(workdir: str, key: str) -> str:
    """KEY in a 0600 file for `wg` (which reads keys from files only), as the selftest's <(echo ...)."""
    fd, path = tempfile.mkstemp(dir=workdir, suffix=".key")
    os.write(fd, key.encode() + b"\n")
    os.close(fd)
    return path


class Pair:
    """Two tunnel-wg daemons of the main topology, peers of each other."""

    def __init__(self, topo, workdir: str):
        self.workdir = workdir
        self.n0, self.n1, self.n2 = topo.netns("n0"), topo.netns("n1"), topo.netns("n2")
        self.w1 = start_dropin(self.n0, workdir)
        self.w2 = start_dropin(self.n0, workdir)
        self.n0.ip("link", "set", self.w1.ifname, "netns", self.n1.name)
        self.n0.ip("link", "set", self.w2.ifname, "netns", self.n2.name)
        (self.key1, self.pub1), (self.key2, self.pub2) = genkey(), genkey()
        self.psk = genkey()[0]
        for ns, w, a4, a6 in ((self.n1, self.w1, ADDR1, ADDR1_6), (self.n2, self.w2, ADDR2, ADDR2_6)):
            ns.addr(w.ifname, f"{a4}/24")
            ns.addr(w.ifname, f"{a6}/112")
        psk = keyfile(workdir, self.psk)
        self.w1.set("private-key", keyfile(workdir, self.key1), "listen-port", "1", "peer", self.pub2,
                    "preshared-key", psk, "allowed-ips", f"{ADDR2}/32,{ADDR2_6}/128")
        self.w2.set("private-key", keyfile(workdir, self.key2), "listen-port", "2", "peer", self.pub1,
                    "preshared-key", psk, "allowed-ips", f"{ADDR1}/32,{ADDR1_6}/128")
        self.n1.link_up(self.w1.ifname)
        self.n2.link_up(self.w2.ifname)

    def endpoints(self, host1: str, host2: str) -> None:
        """Each one's endpoint for the other: on n0's loopback, 127.0.0.1 or [::1]."""
        self.w1.set("peer", self.pub2, "endpoint", f"{host2}:2")
        self.w2.set("peer", self.pub1, "endpoint", f"{host1}:1")

    def mtu(self, mtu: int) -> None:
        for ns, w in ((self.n1, self.w1), (self.n2, self.w2)):
            ns.ip("link", "set", w.ifname, "mtu", str(mtu))
        # The links are abroad: the daemons look at them once a second.
        for w in (self.w1, self.w2):
            Netns.wait_for(lambda w=w: w.status()["mtu"] == mtu, what=f"{w.ifname} to follow MTU {mtu}")


@pytest.fixture
def pair(netns_factory, tmp_path):
    return Pair(netns_factory("wdn"), str(tmp_path))


# -- traffic ---------------------------------------------------------------------------


def ping_every_one(ns: Netns, target: str, count: int = 10, size: int | None = None) -> None:
    """COUNT pings 50 ms apart (as the selftest's `ping -f`, but slower): every one answered.

    Not `-f`: with -c, once it has replies, ping waits for the last one only max(twice the
    longest RTT seen, the interval); flooding, that is under a millisecond, and one reply late
    by a scheduling hiccup counted as lost (the daemons had delivered it). Not `-w` either: with
    a deadline ping keeps sending until COUNT are answered, and the counters test needs exactly
    COUNT. 50 ms between them leaves the last reply 50 ms."""
    cmd = ["ping", "-c", str(count), "-i", "0.05", "-W", "2", target] + (["-s", str(size)] if size else [])
    res = ns.run(cmd, check=False, timeout=60)
    assert res.returncode == 0 and f"{count} received" in res.stdout, f"{ns.name}: {res.stdout}{res.stderr}"


def wait_ping(ns: Netns, target: str) -> None:
    Netns.wait_for(lambda: ns.run(["ping", "-c", "1", "-W", "1", target], check=False).returncode == 0,
                   20, interval=0.1, what=f"{target} from {ns.name}")


def iperf3(client: Netns, server: Netns, address: str, *args: str, seconds: int = 1) -> dict:
    """One iperf3 run from CLIENT to a one-off server on ADDRESS in SERVER; its JSON summary."""
    srv = server.popen(["iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    Netns.wait_for(lambda: server.run(["ss", "-tlnH", "sport = :5201"]).stdout.strip(),
                   what=f"iperf3 listening in {server.name}")
    res = client.run(["iperf3", "-c", address, "-t", str(seconds), "-J", *args], check=False,
                     timeout=seconds + 60)
    srv.wait(30)
    assert res.returncode == 0, f"iperf3 {' '.join(args)} to {address}: {res.stdout[-800:]}{res.stderr}"
    return json.loads(res.stdout)["end"]


def tcp_and_udp(pair: Pair, tcp_to: str, udp_to: str) -> None:
    """A second of TCP from n1 to TCP_TO in n2, and of UDP at full speed from n2 to UDP_TO in n1."""
    tcp = iperf3(pair.n1, pair.n2, tcp_to)
    assert tcp["sum_received"]["bytes"] > 1_000_000, tcp["sum_received"]
    udp = iperf3(pair.n2, pair.n1, udp_to, "-u", "-b", "0")
    assert udp["sum"]["packets"] > udp["sum"]["lost_packets"], udp["sum"]


# -- the main topology -----------------------------------------------------------------


def test_counters_agree_after_a_known_ping_run(pair):
    """ip -stats on each TUN and wg show transfer, before and after ten pings of 84 bytes."""
    pair.endpoints("127.0.0.1", "127.0.0.1")
    wait_ping(pair.n2, ADDR1)  # the handshake is out of the way
    assert int(pair.w1.show("latest-handshakes").split()[1]) > 0
    links = {w.ifname: link_stats(ns, w.ifname) for ns, w in ((pair.n1, pair.w1), (pair.n2, pair.w2))}
    wg = {w.ifname: w.transfer() for w in (pair.w1, pair.w2)}
    ping_every_one(pair.n2, ADDR1, count=10)
    # An 84-byte packet is padded to 96 and sealed with a 16-byte header and 16-byte tag: 128 bytes.
    for w, ns, peer in ((pair.w1, pair.n1, pair.pub2), (pair.w2, pair.n2, pair.pub1)):
        after = link_stats(ns, w.ifname)
        written = {k: after[k] - links[w.ifname][k] for k in ("rx_bytes", "rx_packets")}
        assert written == {"rx_bytes": 10 * 84, "rx_packets": 10}, (w.ifname, written)
        rx, tx = w.transfer()[peer]
        assert (rx - wg[w.ifname][peer][0], tx - wg[w.ifname][peer][1]) == (10 * 128, 10 * 128)


@pytest.mark.parametrize("outer", ["ipv4", "ipv6"])
def test_ping_and_iperf3_with_the_default_and_a_large_mtu(pair, outer):
    host = "127.0.0.1" if outer == "ipv4" else "[::1]"
    pair.endpoints(host, host)
    wait_ping(pair.n2, ADDR1)
    for mtu in (1420, BIG_MTU):
        if mtu != 1420:
            pair.mtu(mtu)
        for ns, target in ((pair.n2, ADDR1), (pair.n1, ADDR2), (pair.n2, ADDR1_6), (pair.n1, ADDR2_6)):
            ping_every_one(ns, target)
        if mtu == BIG_MTU:
            ping_every_one(pair.n1, ADDR2, count=3, size=mtu - 28)  # one unfragmented inner packet each
        tcp_and_udp(pair, ADDR2 if mtu == 1420 else ADDR2_6, ADDR1_6 if mtu == 1420 else ADDR1)
    endpoint = pair.w2.show("endpoints").split()[1]
    assert endpoint == ("127.0.0.1:1" if outer == "ipv4" else "[::1]:1")


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_a_udp_burst_arrives_whole_in_a_few_tun_writes(pair, v6):
    """300 datagrams sent back to back through the tunnel: every one arrives, intact and in order, and
    the receiving daemon wrote them to its TUN as UDP super-packets (USO), far fewer writes than datagrams."""
    pair.endpoints("127.0.0.1", "127.0.0.1")
    wait_ping(pair.n2, ADDR1)
    here, there = (ADDR1_6, ADDR2_6) if v6 else (ADDR1, ADDR2)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with pair.n1.entered():
        rx = socket.socket(family, socket.SOCK_DGRAM)
    with pair.n2.entered():
        tx = socket.socket(family, socket.SOCK_DGRAM)
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root): room for the whole burst
        rx.bind((here, 7007))
        rx.settimeout(10)
        tx.bind((there, 0))
        port = tx.getsockname()[1]
        before = pair.w1.status()["counters"]["tun_writes"]
        payloads = [i.to_bytes(4, "big") * 300 for i in range(300)]
        for p in payloads:
            tx.sendto(p, (here, 7007))
        got = [rx.recvfrom(4096) for _ in payloads]
    assert [g[0] for g in got] == payloads
    assert {g[1][1] for g in got} == {port}
    writes = pair.w1.status()["counters"]["tun_writes"] - before
    assert writes <= len(payloads) // 4, f"{writes} TUN writes for {len(payloads)} datagrams"


def test_roaming_to_a_new_source_address_and_port(pair):
    pair.endpoints("127.0.0.1", "127.0.0.1")
    wait_ping(pair.n1, ADDR2)
    # n0's loopback loses 127.0.0.1: w1's datagrams now come from 127.212.121.99, and from a new port.
    pair.n0.ip("-4", "addr", "del", "127.0.0.1/8", "dev", "lo")
    pair.n0.ip("-4", "addr", "add", "127.212.121.99/8", "dev", "lo")
    pair.w1.set("listen-port", "9999")
    pair.w1.set("peer", pair.pub2, "endpoint", "127.0.0.1:2")
    ping_every_one(pair.n1, ADDR2_6, count=1)
    assert pair.w2.show("endpoints") == f"{pair.pub1}\t127.212.121.99:9999"
    assert pair.w1.show("listen-port") == "9999"
    # And over IPv6.
    pair.w1.set("listen-port", "9998")
    pair.w1.set("peer", pair.pub2, "endpoint", "[::1]:2")
    ping_every_one(pair.n1, ADDR2, count=1)
    assert pair.w2.show("endpoints") == f"{pair.pub1}\t[::1]:9998"


def test_cryptokey_routing_takes_a_more_specific_source_away(pair):
    pair.endpoints("[::1]", "[::1]")
    pair.w1.set("peer", pair.pub2, "allowed-ips", "192.168.241.0/24")
    wait_ping(pair.n2, ADDR1)
    with pair.n1.entered():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pair.n2.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind((ADDR1, 1111))
        listener.settimeout(5)
        sender.sendto(b"X", (ADDR1, 1111))
        assert listener.recv(10) == b"X"
        # Another peer now owns n2's address: what w2 sends from it is no longer w2's to send.
        other = genkey()[1]
        pair.w1.set("peer", other, "allowed-ips", f"{ADDR2}/32")
        pair.w2.set("listen-port", "9997")  # and w2 roams meanwhile: w1 still learns where it is
        before = pair.w1.status()["counters"]["drops"].get("disallowed_source", 0)
        sender.sendto(b"Y", (ADDR1, 1111))
        Netns.wait_for(lambda: pair.w1.status()["counters"]["drops"].get("disallowed_source", 0) > before,
                       what="w1 to drop the packet from a source its sender may not use")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.recv(10)
        pair.w1.set("peer", other, "remove")
        assert pair.w1.show("endpoints") == f"{pair.pub2}\t[::1]:9997"
    finally:
        listener.close()
        sender.close()


def test_a_new_private_key_handshakes_at_once(pair):
    """Keys change on a session that has just handshaked: the next packet handshakes again with no wait."""
    pair.endpoints("127.0.0.1", "127.0.0.1")
    ping_every_one(pair.n1, ADDR2, count=1)
    key3 = genkey()[0]
    pub3 = pubkey(key3)
    pair.w1.set("private-key", keyfile(pair.workdir, key3))
    pair.w2.set("peer", pub3, "preshared-key", keyfile(pair.workdir, pair.psk), "allowed-ips", f"{ADDR1}/32",
                "peer", pair.pub1, "remove")
    # One ping, answered within REKEY_TIMEOUT (5 s): a handshake made at once, not after the rate limit.
    res = pair.n1.run(["ping", "-c", "1", "-W", "3", ADDR2], check=False)
    assert res.returncode == 0, res.stdout
    assert pair.w1.show("public-key") == pub3
    assert pair.w2.show("peers") == pub3


def test_wireguard_inside_wireguard_and_a_routing_loop_it_survives(pair, tmp_path):
    """The outer pair carries fd00::5:0/112; an inner pair, whose daemons live in n1 and n2, runs over it.

    Then the selftest's loop: the inner w3 moves into n0 and the outer w1's endpoint is routed through
    it, while w3's own datagrams go out through w1: each daemon seals the other's datagrams for ever.
    Neither can tell (each sees packets of the other's port), as with wireguard-go; the kernel's
    WireGuard catches it because the whole loop runs in one call chain. Both daemons keep serving
    their socket, and each ends cleanly when its link is deleted.
    """
    for ns, w in ((pair.n1, pair.w1), (pair.n2, pair.w2)):
        ns.ip("addr", "flush", "dev", w.ifname)
    pair.n1.addr(pair.w1.ifname, "fd00::5:1/112")
    pair.n2.addr(pair.w2.ifname, "fd00::5:2/112")
    pair.w1.set("peer", pair.pub2, "allowed-ips", "fd00::5:2/128", "endpoint", "127.0.0.1:2")
    pair.w2.set("peer", pair.pub1, "allowed-ips", "fd00::5:1/128", "endpoint", "127.0.0.1:1")
    w3, w4 = start_dropin(pair.n1, str(tmp_path)), start_dropin(pair.n2, str(tmp_path))
    (key3, pub3), (key4, pub4) = genkey(), genkey()
    for ns, w, a4, a6 in ((pair.n1, w3, ADDR1, ADDR1_6), (pair.n2, w4, ADDR2, ADDR2_6)):
        ns.addr(w.ifname, f"{a4}/24")
        ns.addr(w.ifname, f"{a6}/112")
        ns.ip("link", "set", w.ifname, "mtu", "1340", "up")
    w3.set("listen-port", "5", "private-key", keyfile(pair.workdir, key3), "peer", pub4,
           "allowed-ips", f"{ADDR2}/32,{ADDR2_6}/128", "endpoint", "[fd00::5:2]:5")
    w4.set("listen-port", "5", "private-key", keyfile(pair.workdir, key4), "peer", pub3,
           "allowed-ips", f"{ADDR1}/32,{ADDR1_6}/128", "endpoint", "[fd00::5:1]:5")
    wait_ping(pair.n1, ADDR2)
    ping_every_one(pair.n2, ADDR1_6)
    tcp_and_udp(pair, ADDR2, ADDR1_6)

    pair.n1.ip("link", "set", w3.ifname, "netns", pair.n0.name)
    pair.n0.addr(w3.ifname, f"{ADDR1}/24")
    pair.n0.link_up(w3.ifname)
    ping_every_one(pair.n0, ADDR2, count=1)
    pair.w1.set("peer", pair.pub2, "endpoint", f"{ADDR2}:7")
    pair.n2.ip("link", "del", w4.ifname)
    pair.n2.ip("link", "del", pair.w2.ifname)
    w4.wait_gone()
    pair.w2.wait_gone()
    pair.n0.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", ADDR2], check=False)  # into the loop
    for w in (w3, pair.w1):
        assert w.alive() and w.show("listen-port")  # serving its socket while looping
    pair.n0.ip("link", "del", w3.ifname)
    w3.wait_gone()
    assert pair.w1.alive() and pair.w1.show("endpoints") == f"{pair.pub2}\t{ADDR2}:7"
    pair.n1.ip("link", "del", pair.w1.ifname)
    pair.w1.wait_gone()


def test_a_peer_endpoint_routed_through_its_own_tunnel_is_refused(pair):
    """The common loop (AllowedIPs that hold the endpoint, no policy routing): the kernel's ELOOP check.

    w2's link comes back into n0, where its socket is, and its peer's endpoint moves to an address
    that n0 routes through w2 itself: each datagram w2 seals for w1 comes back to it from its TUN.
    """
    pair.n2.ip("link", "set", pair.w2.ifname, "netns", pair.n0.name)
    pair.n0.addr(pair.w2.ifname, f"{ADDR2}/24")
    pair.n0.link_up(pair.w2.ifname)
    pair.endpoints("127.0.0.1", "127.0.0.1")
    wait_ping(pair.n0, ADDR1)  # a session
    pair.w2.set("peer", pair.pub1, "allowed-ips", f"{ADDR1}/32,10.77.0.0/24", "endpoint", "10.77.0.9:1")
    pair.n0.route("10.77.0.0/24", "dev", pair.w2.ifname)
    sent = pair.w2.transfer()[pair.pub1][1]
    pair.n0.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", ADDR1], check=False)
    assert pair.w2.status()["counters"]["drops"].get("routing_loop", 0) >= 3
    # Each ping was sealed once (128 bytes), never again.
    assert pair.w2.transfer()[pair.pub1][1] - sent == 3 * 128
    pair.w2.set("peer", pair.pub1, "endpoint", "127.0.0.1:1")
    ping_every_one(pair.n0, ADDR1, count=3)


def test_the_daemon_ends_with_its_link(pair):
    """ip link del; the namespace its link was moved to deleted; SIGTERM. Each time the socket goes too."""
    pair.n1.ip("link", "del", pair.w1.ifname)
    pair.w1.wait_gone()
    subprocess.run(["ip", "netns", "del", pair.n2.name], check=True)
    pair.w2.wait_gone()
    w3 = start_dropin(pair.n0, pair.workdir)
    w3.stop()
    w3.wait_gone()
    assert pair.n0.run(["ip", "link", "show", w3.ifname], check=False).returncode != 0


# -- 130,000 allowed IPs; keys as wg shows them; low-order keys ------------------------


def test_130k_allowed_ips_in_one_setconf(netns_factory, tmp_path):
    topo = netns_factory("wda")
    n0 = topo.netns("n0")
    w = start_dropin(n0, str(tmp_path))
    lines = ["[Interface]", f"PrivateKey = {genkey()[0]}", "[Peer]", f"PublicKey = {genkey()[1]}"]
    lines += [f"AllowedIPs = {a}.{b}.0.0/16,{a}::{b:x}/128" for a in range(1, 256) for b in range(256)]
    conf = tmp_path / "big.conf"
    conf.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    n0.run(["wg", "setconf", w.ifname, str(conf)], timeout=120)
    took = time.monotonic() - start
    words = w.show("allowed-ips").split()
    assert len(words) == 255 * 256 * 2 + 1
    print(f"wg setconf of {255 * 256 * 2} allowed IPs: {took:.2f} s")  # a figure for the report, not a limit
    # Many peers with many allowed IPs each, and peers with none before one with some.
    lines = ["[Interface]", f"PrivateKey = {genkey()[0]}"]
    for a in range(1, 41):
        lines += ["[Peer]", f"PublicKey = {genkey()[1]}"] + [f"AllowedIPs = {a}.{b}.0.0/16" for b in range(1, 53)]
    conf.write_text("\n".join(lines) + "\n")
    n0.run(["wg", "setconf", w.ifname, str(conf)], timeout=60)
    rows = w.show("allowed-ips").splitlines()
    assert len(rows) == 40 and all(len(r.split()) == 53 for r in rows)
    lines = []
    for _ in range(29):
        lines += ["[Peer]", f"PublicKey = {genkey()[1]}"]
    lines += ["[Peer]", f"PublicKey = {genkey()[1]}", "AllowedIPs = 255.2.3.4/32,abcd::255/128"]
    conf.write_text("\n".join(lines) + "\n")
    n0.run(["wg", "setconf", w.ifname, str(conf)])
    assert "abcd::255/128" in n0.run(["wg", "showconf", w.ifname]).stdout


def test_keys_as_wg_sets_and_shows_them(netns_factory, tmp_path):
    topo = netns_factory("wdk")
    n0 = topo.netns("n0")
    w = start_dropin(n0, str(tmp_path))
    (key1, pub1), (key2, pub2), psk = genkey(), genkey(), genkey()[0]
    files = {k: keyfile(str(tmp_path), k) for k in (key1, key2, psk, "/" + key1[1:])}
    assert w.show("private-key") == "(none)" and w.show("peers") == ""
    w.set("private-key", files[key1], "peer", pub2, "preshared-key", files[psk])
    assert w.show("private-key") == key1
    assert w.show("preshared-keys") == f"{pub2}\t{psk}"
    w.set("private-key", "/dev/null", "peer", pub2, "preshared-key", "/dev/null")
    assert w.show("private-key") == "(none)"
    assert w.show("preshared-keys") == f"{pub2}\t(none)"
    # A key whose public key is a peer's takes that peer away; that peer cannot come back.
    w.set("private-key", files[key2])
    assert w.show("public-key") == pub2 and w.show("peers") == ""
    w.set("peer", pub2)
    assert w.show("peers") == ""
    w.set("private-key", files[key1])
    w.set("peer", pub2)
    assert w.show("peers") == pub2
    # Shown clamped, as X25519 uses it: a first character '/' (low bits set) reads back '+'.
    w.set("private-key", files["/" + key1[1:]])
    assert w.show("private-key") == "+" + key1[1:]
    for prefixes in ("0.0.0.0/0,10.0.0.0/8,100.0.0.0/10,172.16.0.0/12,192.168.0.0/16", "0.0.0.0/0",
                     "::/0,1700::/111,5000::/4,e000::/37,9000::/75", "::/0"):
        w.set("peer", pub2, "allowed-ips", prefixes)
        key, _, shown = w.show("allowed-ips").partition("\t")
        assert key == pub2 and sorted(shown.split()) == sorted(prefixes.split(","))
    w.set("peer", pub2, "remove")
    assert w.show("peers") == ""


LOW_ORDER = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
             "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=", "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
             "7P///////////////////////////////////////38=", "7f///////////////////////////////////////38=",
             "7v///////////////////////////////////////38="]


def test_low_order_public_keys_are_peers_never_handshaked_with(netns_factory, tmp_path):
    topo = netns_factory("wdl")
    n0 = topo.netns("n0")
    w = start_dropin(n0, str(tmp_path))
    w.set("private-key", keyfile(str(tmp_path), genkey()[0]))
    with n0.entered():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("127.0.0.1", 1111))
        listener.setblocking(False)
        for point in LOW_ORDER:
            w.set("peer", point, "persistent-keepalive", "1", "endpoint", "127.0.0.1:1111")
        assert len(w.show("peers").split()) == len(LOW_ORDER)
        n0.link_up(w.ifname)
        # The keepalive each gets at once is refused before anything is sent (and arms no timer).
        Netns.wait_for(lambda: w.status()["counters"]["drops"].get("invalid_peer_key", 0) >= len(LOW_ORDER),
                       what="the keepalives to low-order keys to be refused")
        assert w.status()["counters"]["udp_sends"] == 0
        with pytest.raises(BlockingIOError):
            listener.recv(100)
    finally:
        listener.close()


# -- behind NAT; a wg-quick-style policy route -------------------------------------------


def _peers_in(n1: Netns, n2: Netns, workdir: str) -> tuple[DropIn, DropIn, str, str]:
    """A daemon in each of N1 and N2 (its socket at home there), addresses and keys as the main pair's."""
    w1, w2 = start_dropin(n1, workdir), start_dropin(n2, workdir)
    (key1, pub1), (key2, pub2) = genkey(), genkey()
    for ns, w, a4, a6 in ((n1, w1, ADDR1, ADDR1_6), (n2, w2, ADDR2, ADDR2_6)):
        ns.addr(w.ifname, f"{a4}/24")
        ns.addr(w.ifname, f"{a6}/112")
    w1.set("private-key", keyfile(workdir, key1), "listen-port", "1", "peer", pub2,
           "allowed-ips", f"{ADDR2}/32,{ADDR2_6}/128")
    w2.set("private-key", keyfile(workdir, key2), "listen-port", "2", "peer", pub1,
           "allowed-ips", f"{ADDR1}/32,{ADDR1_6}/128")
    n1.link_up(w1.ifname)
    n2.link_up(w2.ifname)
    return w1, w2, pub1, pub2


def test_behind_nat_with_persistent_keepalive_then_a_wg_quick_policy_route(netns_factory, tmp_path):
    """
        +------- [n1] -------+      +------------- [n0] router -------------+      +------- [n2] -------+
        | w1 192.168.241.1   |      | r-n1 192.168.1.1/24   r-n2 10.0.0.1/24 |      | w2 192.168.241.2   |
        | n1-r 192.168.1.100 +------+ SNAT 192.168.1.0/24 -> 10.0.0.1       +------+ n2-r 10.0.0.100    |
        +--------------------+      | UDP conntrack forgets after 2 s        |      +--------------------+
    """
    topo = netns_factory("wdt")
    n0, n1, n2 = topo.netns("n0"), topo.netns("n1"), topo.netns("n2")
    n1.link_veth(n0, "192.168.1.100/24", "192.168.1.1/24", name="n1-r", other_name="r-n1")
    n2.link_veth(n0, "10.0.0.100/24", "10.0.0.1/24", name="n2-r", other_name="r-n2")
    n1.route("default", "via", "192.168.1.1")
    n0.sysctl("net.ipv4.ip_forward", 1)
    n0.run(["nft", "add table ip wdnat; add chain ip wdnat post { type nat hook postrouting priority 100; }; "
            "add rule ip wdnat post ip saddr 192.168.1.0/24 ip daddr 10.0.0.0/24 snat to 10.0.0.1"])
    n0.sysctl("net.netfilter.nf_conntrack_udp_timeout", 2)
    n0.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", 2)
    w1, w2, pub1, pub2 = _peers_in(n1, n2, str(tmp_path))

    w1.set("peer", pub2, "endpoint", "10.0.0.100:2", "persistent-keepalive", "1")
    ping_every_one(n1, ADDR2, count=1)
    ping_every_one(n2, ADDR1, count=1)
    assert w2.show("endpoints") == f"{pub1}\t10.0.0.1:1"  # what the NAT made of w1's socket
    # Longer than the router remembers an idle UDP flow: w1's keepalives keep it, so w2 still gets through.
    time.sleep(3)
    ping_every_one(n2, ADDR1, count=1)
    w1.set("peer", pub2, "persistent-keepalive", "0")

    # wg-quick's full tunnel, by hand: w1's own UDP is marked and leaves by the main table; the rest goes in.
    n1.run(["ip", "-6", "addr", "add", "fc00::9/96", "dev", "n1-r", "nodad"])
    n1.route("-6", "default", "via", "fc00::1")
    n2.addr(w2.ifname, "192.168.99.7/32")
    n2.addr(w2.ifname, "abab::1111/128")
    w1.set("fwmark", "51820", "peer", pub2, "allowed-ips", "192.168.99.7,abab::1111")
    assert w1.show("fwmark") == "0xca6c"
    for family in ("-4", "-6"):
        n1.run(["ip", family, "route", "add", "default", "dev", w1.ifname, "table", "51820"])
        n1.run(["ip", family, "rule", "add", "not", "fwmark", "51820", "table", "51820"])
        n1.run(["ip", family, "rule", "add", "table", "main", "suppress_prefixlength", "0"])
    n1.sysctl("net.ipv4.conf.n1-r.rp_filter", 0)
    ping_every_one(n1, "192.168.99.7", count=100)
    ping_every_one(n1, "abab::1111", count=100)


def test_the_source_address_falls_over_when_it_is_removed(netns_factory, tmp_path):
    """
        +------------ [n1] ------------+          +------------ [n2] ------------+
        | w1   n1-n2 10.0.0.1/24       +----------+ n2-n1 10.0.0.2/24        w2  |
        |            fd00:aa::1/96     |          |       fd00:aa::2/96          |
        +------------------------------+          +------------------------------+

    The address w1's datagrams left from is removed: they leave from the one that is left, and w2
    roams to it. Ours sends from unbound sockets and lets the kernel choose the source of every
    datagram, so this holds for IPv4 and IPv6 alike; Debian's wireguard-go, which keeps sending
    from the address it last used (a sticky source), recovers only on IPv6.
    """
    topo = netns_factory("wds")
    n1, n2 = topo.netns("n1"), topo.netns("n2")
    for ns in (n1, n2):
        ns.sysctl("net.ipv6.conf.all.accept_dad", 0)
    n1.link_veth(n2, ["10.0.0.1/24", "fd00:aa::1/96"], ["10.0.0.2/24", "fd00:aa::2/96"])
    n1.sysctl("net.ipv4.conf.n1-n2.promote_secondaries", 1)
    w1, w2, pub1, pub2 = _peers_in(n1, n2, str(tmp_path))

    w1.set("peer", pub2, "endpoint", "10.0.0.2:2")
    ping_every_one(n1, ADDR2, count=1)
    n1.ip("addr", "add", "10.0.0.10/24", "dev", "n1-n2")
    n1.ip("addr", "del", "10.0.0.1/24", "dev", "n1-n2")
    ping_every_one(n1, ADDR2, count=1)
    assert w2.show("endpoints") == f"{pub1}\t10.0.0.10:1"

    w1.set("peer", pub2, "endpoint", "[fd00:aa::2]:2")
    ping_every_one(n1, ADDR2, count=1)
    n1.ip("addr", "add", "fd00:aa::10/96", "dev", "n1-n2", "nodad")
    n1.ip("addr", "del", "fd00:aa::1/96", "dev", "n1-n2")
    ping_every_one(n1, ADDR2, count=1)
    assert w2.show("endpoints") == f"{pub1}\t[fd00:aa::10]:1"
