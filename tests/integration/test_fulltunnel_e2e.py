"""A full-tunnel client through our server to a site LAN and the internet, for real, in namespaces.

    #                      198.51.100.0/24                     203.0.113.0/24
    #   [ws] workstation  ws-rt .2 ------ rt-ws .1 [rt] rt-srv .1 ------ srv-rt .2  [srv] server
    #   `tunnel up` (full)  2001:db8:1::2/64    router      2001:db8:2::1/64  |  `tunnel server up`
    #   default via rt                     rt-inet .1                         |  pool 10.8.0.0/24 (v4 only)
    #                                      2001:db8:3::1/64                   |  NAT out of srv-rt and srv-site
    #                                        | 192.0.2.0/24                   | srv-site 10.20.0.1/24
    #                                      inet-rt .2, .53 (wrong resolver)   | site-srv 10.20.0.2/24
    #                                      2001:db8:3::2/64                   |          10.20.0.53 (resolver)
    #                                      [inet] internet host             [site] site LAN host
    #
    # The client dials 203.0.113.2:51820 and gets AllowedIPs = 0.0.0.0/0 and
    # DNS = 10.20.0.53; ws's resolv.conf (/etc/netns/<ws>/resolv.conf) first
    # names the wrong resolver 192.0.2.53 in [inet].

[inet] counts what reaches it in an nftables table of its own (prerouting,
before anything else), so "nothing arrived" is a kernel counter, not the
absence of a reply.

Checked: ws reaches site and inet through the tunnel, and both see the
server's address as the source (NAT); DNS queries go to the pushed resolver
only; with the server stopped nothing of ws's reaches inet; SIGTERM, and
SIGKILL + `tunnel down`, restore ws and srv exactly (links, addresses,
routes, rules, nftables, resolv.conf, forwarding); an IPv4-only full tunnel
leaks no IPv6; wireguard-go as the server carries the same client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.netns import Netns, WgPeer, genkey, wireguard_go
from tests.helpers.server import ServerProc
from tests.helpers.tunnelproc import (
    TunnelProc,
    interface_config,
    ping,
    run_tunnel,
    start_tunnel,
    wait_ping,
)

pytestmark = pytest.mark.netns

WS, RT_WS = "198.51.100.2", "198.51.100.1"
SRV, RT_SRV = "203.0.113.2", "203.0.113.1"
INET, RT_INET, WRONG_DNS = "192.0.2.2", "192.0.2.1", "192.0.2.53"
SRV_SITE, SITE, SITE_DNS = "10.20.0.1", "10.20.0.2", "10.20.0.53"
WS6, INET6 = "2001:db8:1::2", "2001:db8:3::2"
POOL, SERVER_TUN = "10.8.0.0/24", "10.8.0.1"
PORT = 51820
SITE_ANSWER, WRONG_ANSWER = "10.20.0.99", "192.0.2.66"

# Every connection gets the peer's address back, and the address is logged.
_PEER_RECORDER = r"""
import socket, sys
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(8)
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    with open(log, "a") as f:
        f.write(peer[0] + "\n")
    conn.sendall(peer[0].encode())
    conn.close()
"""

# A DNS responder: any A query gets ANSWER, anything else an empty NOERROR;
# every query is logged as "<source> <name> <qtype>".
_DNS_RESPONDER = r"""
import socket, struct, sys
host, answer, log = sys.argv[1], socket.inet_aton(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, 53))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(512)
    if len(data) < 12:
        continue
    qid, = struct.unpack_from("!H", data)
    labels, i = [], 12
    while i < len(data) and data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode(errors="replace"))
        i += 1 + data[i]
    end = i + 5
    if end > len(data):
        continue
    qtype, = struct.unpack_from("!H", data, i + 1)
    with open(log, "a") as f:
        f.write(f"{peer[0]} {'.'.join(labels)} {qtype}\n")
    a = qtype == 1
    reply = struct.pack("!HHHHHH", qid, 0x8180, 1, int(a), 0, 0) + data[12:end]
    if a:
        reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + answer
    s.sendto(reply, peer)
"""

# From ws: one A query to the first nameserver of /etc/resolv.conf as this
# namespace sees it, then one lookup through glibc; prints both.
_DNS_QUERY = r"""
import random, socket, struct
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
qid = random.randrange(65536)
q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "www.example.test".split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (ns, 53))
r, _ = s.recvfrom(512)
assert struct.unpack_from("!H", r)[0] == qid
print(ns, socket.inet_ntoa(r[-4:]), socket.gethostbyname("glibc.example.test"))
"""

# [inet]'s own counters, in prerouting before conntrack or anything else.
_COUNTERS = """
table inet ftcount {
    counter v4data {}
    counter v6data {}
    counter dns {}
    counter clear_from_ws {}
    chain pre {
        type filter hook prerouting priority -400; policy accept;
        meta nfproto ipv4 meta l4proto { icmp, tcp, udp } counter name v4data
        meta nfproto ipv6 meta l4proto { tcp, udp } counter name v6data
        icmpv6 type echo-request counter name v6data
        udp dport 53 counter name dns
        ip saddr 198.51.100.2 counter name clear_from_ws
        ip6 saddr 2001:db8:1::2 counter name clear_from_ws
    }
}
"""


class Lab:
    """The topology above, the server's files, and helpers to start and stop both ends."""

    def __init__(self, netns_factory, tmp_path):
        self.topo = netns_factory("ft")
        self.tmp = tmp_path
        t = self.topo
        self.ws, self.rt, self.srv = t.netns("ws"), t.netns("rt"), t.netns("srv")
        self.site, self.inet = t.netns("site"), t.netns("inet")
        self.ws.link_veth(self.rt, [f"{WS}/24", f"{WS6}/64"], [f"{RT_WS}/24", "2001:db8:1::1/64"])
        self.rt.link_veth(self.srv, [f"{RT_SRV}/24", "2001:db8:2::1/64"], [f"{SRV}/24", "2001:db8:2::2/64"])
        self.rt.link_veth(self.inet, [f"{RT_INET}/24", "2001:db8:3::1/64"],
                          [f"{INET}/24", f"{WRONG_DNS}/24", f"{INET6}/64"])
        self.srv.link_veth(self.site, f"{SRV_SITE}/24", [f"{SITE}/24", f"{SITE_DNS}/24"])
        self.rt.enable_forwarding()
        for ns, gw4, gw6 in ((self.ws, RT_WS, "2001:db8:1::1"), (self.srv, RT_SRV, "2001:db8:2::1"),
                             (self.inet, RT_INET, "2001:db8:3::1")):
            ns.route("default", "via", gw4)
            ns.route("-6", "default", "via", gw6)
        self.resolv = os.path.join(self.ws.etc_dir(), "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write(f"nameserver {WRONG_DNS}\n")
        self.inet.run(["nft", "-f", "-"], input=_COUNTERS)
        for ns in (self.ws, self.srv):  # link-local DAD done before any snapshot
            ns.wait_dad()
        self.server = ServerProc(self.srv, str(tmp_path), t.unique_ifname("ftsv"))

    # -- server --------------------------------------------------------------------

    def add_client(self, name: str) -> str:
        text = self.server.add_client(name)
        assert "AllowedIPs = 0.0.0.0/0\n" in text and f"Endpoint = {SRV}:{PORT}" in text, text
        assert f"DNS = {SITE_DNS}" in text, text
        return text

    def start_server_and_client(self) -> tuple[str, TunnelProc]:
        self.server.init(SRV, PORT, pools=[POOL], dns=[SITE_DNS])
        self.server.up()
        text = self.add_client("ws")
        return text, self.client_up(text)

    # -- client and services --------------------------------------------------------------

    def client_up(self, text: str) -> TunnelProc:
        tp = start_tunnel(self.ws, str(self.tmp), text, ifname=self.topo.unique_ifname("ftc"))
        tp.wait_up()
        return tp

    def recorder(self, ns: Netns, host: str, port: int) -> str:
        """A peer-address recorder on HOST:PORT in NS; returns its log path."""
        log = str(self.tmp / f"peers-{ns.short}-{port}")
        proc = ns.popen([sys.executable, "-c", _PEER_RECORDER, host, str(port), log],
                        stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        return log

    def resolver(self, ns: Netns, host: str, answer: str) -> str:
        log = str(self.tmp / f"dns-{ns.short}")
        open(log, "w").close()
        proc = ns.popen([sys.executable, "-c", _DNS_RESPONDER, host, answer, log],
                        stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        return log

    def source_seen_by(self, host: str, port: int) -> str:
        """Connect from ws; the far end answers with the source address it saw."""
        code = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10); "
                "print(s.recv(100).decode())")
        return self.ws.python(code, host, str(port)).stdout.strip()

    def counter(self, name: str) -> int:
        out = json.loads(self.inet.run(["nft", "-j", "list", "counter", "inet", "ftcount", name]).stdout)
        return next(x["counter"]["packets"] for x in out["nftables"] if "counter" in x)

    def reset_counters(self) -> None:
        for name in ("v4data", "v6data", "dns", "clear_from_ws"):
            self.inet.run(["nft", "reset", "counter", "inet", "ftcount", name])

    def ws_keeps_trying(self, target: str, seconds: int = 3) -> None:
        """ping, UDP and TCP toward TARGET from ws for a while; none is expected to get through."""
        self.ws.run(["ping", "-c", str(seconds * 5), "-i", "0.2", "-W", "1", target], check=False)
        code = r"""
import socket, sys, time
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
for i in range(10):
    try:
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.sendto(b"leak?", (host, 9999))
        u.close()
    except OSError:
        pass  # the kill switch answers EPERM; that is fine
    time.sleep(0.05)
try:
    socket.create_connection((host, 8080), 1).close()
    print("connected")
except OSError:
    pass
"""
        out = self.ws.python(code, target).stdout
        assert "connected" not in out, out


FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def snapshot(ns: Netns, resolv: str | None = None) -> dict:
    return ns.state(sysctls=FORWARDING, files=[resolv] if resolv else [])


def stop_client(tp: TunnelProc) -> None:
    assert tp.stop(signal.SIGTERM) == 0, tp.log()
    assert "Traceback" not in tp.log(), tp.log()


# -- tests ----------------------------------------------------------------------------


def test_site_and_internet_through_the_tunnel_with_the_servers_address(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    site_log = lab.recorder(lab.site, SITE, 8080)
    inet_log = lab.recorder(lab.inet, INET, 8080)
    _, tp = lab.start_server_and_client()
    wait_ping(lab.ws, SERVER_TUN)
    lab.reset_counters()
    ping(lab.ws, SITE)
    ping(lab.ws, INET)
    # NAT: the site sees the server's LAN address, the internet its public one.
    assert lab.source_seen_by(SITE, 8080) == SRV_SITE
    assert lab.source_seen_by(INET, 8080) == SRV
    with open(inet_log) as f:
        assert f.read().split() == [SRV]
    with open(site_log) as f:
        assert f.read().split() == [SRV_SITE]
    # Nothing of ws's reached inet in clear; everything came through the server.
    assert lab.counter("v4data") > 0
    assert lab.counter("clear_from_ws") == 0
    stop_client(tp)
    assert lab.server.stop() == 0, lab.server.log()


def test_dns_goes_only_to_the_pushed_resolver(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    good = lab.resolver(lab.site, SITE_DNS, SITE_ANSWER)
    wrong = lab.resolver(lab.inet, WRONG_DNS, WRONG_ANSWER)
    # Without the tunnel ws asks the wrong resolver: it works and is being counted.
    out = lab.ws.python(_DNS_QUERY).stdout.split()
    assert out == [WRONG_DNS, WRONG_ANSWER, WRONG_ANSWER]
    assert lab.counter("dns") >= 2
    _, tp = lab.start_server_and_client()
    with open(lab.resolv) as f:
        assert f.read().split("nameserver", 1)[1].split()[0] == SITE_DNS
    open(wrong, "w").close()
    lab.reset_counters()
    wait_ping(lab.ws, SERVER_TUN)
    for _ in range(3):
        out = lab.ws.python(_DNS_QUERY).stdout.split()
        assert out == [SITE_DNS, SITE_ANSWER, SITE_ANSWER]
    with open(good) as f:
        queries = f.read().splitlines()
    # Through the tunnel and the server's NAT: the resolver sees the server's LAN address.
    assert len(queries) >= 6 and all(q.split()[0] == SRV_SITE for q in queries), queries
    assert {"www.example.test", "glibc.example.test"} <= {q.split()[1] for q in queries}
    with open(wrong) as f:
        assert f.read() == ""
    assert lab.counter("dns") == 0
    stop_client(tp)
    with open(lab.resolv) as f:
        assert f.read() == f"nameserver {WRONG_DNS}\n"
    assert lab.server.stop() == 0, lab.server.log()


def test_nothing_reaches_the_internet_while_the_server_is_down(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    lab.recorder(lab.inet, INET, 8080)
    _, tp = lab.start_server_and_client()
    wait_ping(lab.ws, INET)
    assert lab.counter("v4data") > 0  # the counter sees tunnelled traffic
    assert lab.server.stop() == 0, lab.server.log()
    lab.reset_counters()
    lab.ws_keeps_trying(INET)
    lab.ws_keeps_trying(INET6)
    assert lab.counter("v4data") == 0
    assert lab.counter("v6data") == 0
    assert lab.counter("clear_from_ws") == 0
    assert tp.alive(), tp.log()
    stop_client(tp)


def test_sigterm_and_sigkill_plus_down_restore_workstation_and_server(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    ws_before = snapshot(lab.ws, lab.resolv)
    srv_before = snapshot(lab.srv)
    text, tp = lab.start_server_and_client()
    wait_ping(lab.ws, SITE)
    assert snapshot(lab.ws, lab.resolv) != ws_before
    assert snapshot(lab.srv) != srv_before
    stop_client(tp)
    assert snapshot(lab.ws, lab.resolv) == ws_before

    tp = lab.client_up(text)
    wait_ping(lab.ws, SITE)
    assert tp.stop(signal.SIGKILL) == -signal.SIGKILL
    lab.ws.wait_for(lambda: not tp.tun_exists(), what="the client's TUN device to go with its process")
    assert snapshot(lab.ws, lab.resolv) != ws_before  # kill switch, rules and DNS stay until down
    res = run_tunnel(lab.ws, tp.state_dir, "down", tp.ifname)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert snapshot(lab.ws, lab.resolv) == ws_before

    assert lab.server.stop(signal.SIGTERM) == 0, lab.server.log()
    assert snapshot(lab.srv) == srv_before
    lab.server.up()
    assert snapshot(lab.srv) != srv_before
    assert lab.server.stop(signal.SIGKILL) == -signal.SIGKILL
    res = lab.server.down()
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert snapshot(lab.srv) == srv_before
    assert "Traceback" not in lab.server.log(), lab.server.log()


def test_ipv4_only_full_tunnel_leaks_no_ipv6(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    # IPv6 works between ws and inet before the tunnel, and the counter sees it.
    ping(lab.ws, INET6)
    assert lab.counter("v6data") >= 3
    _, tp = lab.start_server_and_client()
    wait_ping(lab.ws, INET)
    lab.reset_counters()
    res = lab.ws.run(["ping", "-c", "5", "-i", "0.2", "-W", "1", INET6], check=False)
    assert res.returncode != 0, res.stdout
    lab.ws_keeps_trying(INET6, seconds=1)
    assert lab.counter("v6data") == 0
    assert lab.counter("clear_from_ws") == 0
    stop_client(tp)
    ping(lab.ws, INET6)  # and back once the tunnel is down
    assert lab.server.stop() == 0, lab.server.log()


def test_wireguard_go_server_carries_the_full_tunnel_client(netns_factory, tmp_path):
    lab = Lab(netns_factory, tmp_path)
    inet_log = lab.recorder(lab.inet, INET, 8080)
    ck, sk = genkey(), genkey()
    wg_if = lab.topo.unique_ifname("ftwg")
    wireguard_go(lab.srv, wg_if, sk[0], PORT, peers=[WgPeer(ck[1], ["10.8.0.2/32"])],
                 address=f"{SERVER_TUN}/24")
    lab.srv.sysctl("net.ipv4.ip_forward", 1)
    lab.srv.run(["nft", "-f", "-"], input=(
        "table ip ftnat {\n"
        "  chain post {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {POOL} oifname != \"{wg_if}\" masquerade\n"
        "  }\n"
        "}\n"))
    text = interface_config(ck[0], None, ["10.8.0.2/24"], [WgPeer(sk[1], ["0.0.0.0/0"], f"{SRV}:{PORT}", 25)])
    tp = lab.client_up(text)
    wait_ping(lab.ws, INET)
    ping(lab.ws, INET)
    ping(lab.ws, SITE)
    assert lab.source_seen_by(INET, 8080) == SRV
    with open(inet_log) as f:
        assert f.read().split() == [SRV]
    assert lab.counter("clear_from_ws") == 0
    stop_client(tp)
