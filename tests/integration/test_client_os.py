"""The client's OS changes, for real, in namespaces; and their undo.

    #   [t] t-c ---------- wg0 [c] eth0 ---------- u-c [u]
    #   tunnel far end       client                 uplink router 192.168.5.1/24 fd05::1/64
    #                        10.9.0.2/32 fd09::2     "internet" on its lo: 198.51.100.1 2001:db8:1::1
    #                        192.168.5.2/24 fd05::2/64, defaults via [u]

"wg0" is a veth standing in for the tunnel link (no data plane yet); it has
ARP off so a packet routed into it leaves at once.  [t] and [u] count what
reaches them with nft counters on their ingress (`probe` tables), so "it
left through the tunnel" means "[t] saw it" and "it leaked" means "[u] saw
it".  The code under test runs in [c] in a fresh Python process (as `tunnel
up` would), with its journal in a temporary directory.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from client import dns
from tunnel import netconfig, nft
from tunnel.undo import Journal

pytestmark = pytest.mark.netns

INTERNET4 = "198.51.100.1"
INTERNET6 = "2001:db8:1::1"
LAN6 = "fd05::1"
FWMARK = 51820
SYSCTLS = ["net.ipv4.conf.all.src_valid_mark", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]

PRELUDE = """
import errno, json, os, signal, socket, sys
from tunnel.undo import Journal
from client import routing, killswitch, dns
j = Journal.open(sys.argv[1])
"""

# Counts, at a namespace's ingress, the packets toward each probe address.
PROBE_TABLE = """
table netdev tunnel_probe {{
  chain in {{
    type filter hook ingress device "{dev}" priority 0;
    meta protocol ip ip daddr {i4} counter comment "i4"
    meta protocol ip6 ip6 daddr {i6} counter comment "i6"
    meta protocol ip6 ip6 daddr {l6} counter comment "l6"
    meta protocol ip udp dport 67 counter comment "dhcp"
  }}
}}
"""

SEND = """
import socket, sys
dst, mark = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
try:
    s.sendto(b"probe", (dst, 9))
    print("sent")
except OSError as e:
    print("refused", e.errno)
"""

SEND_DHCP = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", 68))
s.sendto(b"discover", ("255.255.255.255", 67))
"""


class Site:
    """The three namespaces above, with the helpers the tests share."""

    def __init__(self, topo, tmp_path):
        self.t, self.c, self.u = topo.netns("t"), topo.netns("c"), topo.netns("u")
        self.c.link_veth(self.t, ["10.9.0.2/32", "fd09::2/128"], None, name="wg0")
        self.c.run(["ip", "link", "set", "wg0", "arp", "off"])
        # So that taking the link down and up (a "crash") leaves the same addresses behind.
        self.c.sysctl("net.ipv6.conf.wg0.keep_addr_on_down", 1)
        self.c.link_veth(self.u, ["192.168.5.2/24", "fd05::2/64"], ["192.168.5.1/24", "fd05::1/64"],
                         name="eth0")
        self.u.addr("lo", f"{INTERNET4}/32")
        self.u.addr("lo", f"{INTERNET6}/128")
        self.c.route("default", "via", "192.168.5.1")
        self.c.route("-6", "default", "via", LAN6)
        for ns, dev in ((self.t, "t-c"), (self.u, "u-c")):
            ns.run(["nft", "-f", "-"], input=PROBE_TABLE.format(dev=dev, i4=INTERNET4, i6=INTERNET6, l6=LAN6))
        self.journal = str(tmp_path / "state" / "wg0.json")
        self.settle()

    def settle(self) -> None:
        # Link-local addresses finish DAD on their own time; snapshots must not race it.
        # After a link bounce, carrier and the link-local address come back later still.
        def settled() -> bool:
            addrs = self.c.ip("-6", "addr", "show", "dev", "wg0")
            return ("tentative" not in self.c.ip("-6", "addr") and "fe80::" in addrs
                    and "NO-CARRIER" not in self.c.ip("link"))
        self.c.wait_for(settled, what="links settled in [c]")

    def python(self, code: str, *args: str, check: bool = True):
        return self.c.python(PRELUDE + textwrap.dedent(code), self.journal, *args, check=check)

    def undo(self) -> list[str]:
        out = self.python("print(json.dumps(j.undo_all()))").stdout
        return json.loads(out.strip().splitlines()[-1])

    def send(self, dst: str, mark: int = 0) -> str:
        return self.c.python(SEND, dst, str(mark)).stdout.strip()

    def seen(self, ns, comment: str) -> int:
        return ns.nft_counter("netdev", "tunnel_probe", "in", comment)

    def counts(self, comment: str) -> tuple[int, int]:
        """(through the tunnel, leaked to the uplink) for one probe address."""
        return self.seen(self.t, comment), self.seen(self.u, comment)

    def snapshot(self) -> dict:
        snap = self.c.state(sysctls=SYSCTLS)  # routes as sets: a link bounce re-adds its kernel routes last
        snap["resolv"] = self.c.run(["cat", "/etc/resolv.conf"], check=False).stdout  # as seen inside [c]
        return snap


@pytest.fixture
def site(netns_factory, tmp_path):
    return Site(netns_factory("cr"), tmp_path)


def _rules(ns, family: str) -> list[dict]:
    return ns.ip_json(family, "rule")


def test_full_tunnel_sends_everything_through_the_tunnel_and_undoes_twice(site):
    before = site.snapshot()
    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (0, 1)

    site.python(f"routing.apply_full_tunnel(j, 'wg0', {FWMARK}, {{4, 6}}, addresses=['10.9.0.2/32'])")

    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (1, 1)
    assert site.send(INTERNET6) == "sent" and site.counts("i6") == (1, 0)
    # Our own socket's mark takes it around table T, out of the uplink.
    assert site.send(INTERNET4, FWMARK) == "sent" and site.counts("i4") == (1, 2)
    # The LAN stays reachable through main (suppress_prefixlength 0 only hides defaults).
    assert site.send(LAN6) == "sent" and site.counts("l6") == (0, 1)

    for fam in ("-4", "-6"):
        rules = {r["priority"]: r for r in _rules(site.c, fam)}
        assert rules[32765]["table"] == str(FWMARK) and "not" in rules[32765]
        assert rules[32765]["fwmark"] == hex(FWMARK)
        assert rules[32764]["table"] == "main" and rules[32764]["suppress_prefixlen"] == 0
    assert site.c.run(["sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"]).stdout.strip() == "1"
    assert [r["dev"] for r in site.c.ip_json("-4", "route", "show", "table", str(FWMARK))] == ["wg0"]

    assert site.undo() == []
    assert site.undo() == []
    assert site.snapshot() == before
    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (1, 3)


def test_ipv4_only_tunnel_blocks_ipv6_egress(site):
    before = site.snapshot()
    site.python(f"routing.apply_full_tunnel(j, 'wg0', {FWMARK}, {{4}})")

    assert site.send(INTERNET6).startswith("refused") and site.counts("i6") == (0, 0)
    assert site.send(LAN6) == "sent" and site.counts("l6") == (0, 1)
    assert site.send(INTERNET6, FWMARK) == "sent" and site.counts("i6") == (0, 1)
    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (1, 0)

    assert site.undo() == [] and site.snapshot() == before


def test_kill_switch_blocks_everything_but_the_tunnel_socket_when_the_link_is_down(site):
    before = site.snapshot()
    site.python(f"""
        routing.apply_full_tunnel(j, 'wg0', {FWMARK}, {{4, 6}})
        killswitch.apply_killswitch(j, 'wg0', {FWMARK})
    """)
    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (1, 0)

    # The data plane died: its link (and table T's routes) went away.
    site.c.run(["ip", "link", "set", "wg0", "down"])
    assert site.send(INTERNET4).startswith("refused")
    assert site.send(INTERNET6).startswith("refused")
    assert site.counts("i4") == (1, 0) and site.counts("i6") == (0, 0)
    assert site.send(INTERNET4, FWMARK) == "sent" and site.counts("i4") == (1, 1)
    site.c.python(SEND_DHCP)
    assert site.seen(site.u, "dhcp") == 1
    dropped = site.python("print(killswitch.dropped_packets('wg0'))").stdout.split()[-1]
    assert int(dropped) >= 2

    # Re-applying (a config reload) swaps the table atomically, it does not stack.
    site.python(f"killswitch.apply_killswitch(j, 'wg0', {FWMARK})")
    tables = [o["table"]["name"] for o in json.loads(site.c.run(["nft", "-j", "list", "tables"]).stdout)["nftables"]
              if "table" in o]
    assert sorted(tables) == ["tunnel_ks_wg0", "tunnel_rt_wg0"]

    site.c.run(["ip", "link", "set", "wg0", "up"])
    site.settle()
    assert site.undo() == [] and site.undo() == []
    assert site.snapshot() == before


def test_two_kill_switches_coexist(site):
    site.python(f"""
        killswitch.apply_killswitch(j, 'wg0', {FWMARK})
        j2 = Journal.open(sys.argv[1] + '.wg1')
        killswitch.apply_killswitch(j2, 'wg1', {FWMARK + 1})
        j2.undo_all()
    """)
    tables = json.loads(site.c.run(["nft", "-j", "list", "tables"]).stdout)["nftables"]
    assert [o["table"]["name"] for o in tables if "table" in o] == ["tunnel_ks_wg0"]
    assert site.undo() == []


def test_resolv_conf_is_replaced_in_place_and_restored(site):
    host_resolv = open("/etc/resolv.conf", "rb").read()
    etc = site.c.etc_dir()
    shadow = os.path.join(etc, "resolv.conf")
    with open(shadow, "w") as f:
        f.write("nameserver 192.168.5.1\n")
    inode = os.stat(shadow).st_ino
    before = site.snapshot()

    site.python("dns.apply_dns(j, 'wg0', ['10.9.0.1', 'fd09::1'], ['corp.example'], use_resolved=False)")
    text = open(shadow).read()
    assert "nameserver 10.9.0.1\nnameserver fd09::1\nsearch corp.example\n" in text
    assert os.stat(shadow).st_ino == inode  # the bind mount's file itself was rewritten

    assert site.undo() == [] and site.undo() == []
    assert open(shadow).read() == "nameserver 192.168.5.1\n"
    assert site.snapshot() == before
    assert not os.listdir(os.path.dirname(site.journal))  # saved copy and journal gone
    assert open("/etc/resolv.conf", "rb").read() == host_resolv


def test_resolv_conf_rewritten_by_someone_else_is_left_alone(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    j = Journal.open(str(tmp_path / "state" / "wg0.json"))
    dns.apply_dns(j, "wg0", ["10.9.0.1"], resolv_conf=str(conf), use_resolved=False)
    conf.write_text("nameserver 192.0.2.99\n")  # a DHCP renewal
    assert j.undo_all() == []
    assert conf.read_text() == "nameserver 192.0.2.99\n"
    assert os.listdir(tmp_path / "state") == []


def test_resolved_back_end_calls(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(dns, "run_resolvectl", calls.append)
    j = Journal.open(str(tmp_path / "lo.json"))
    dns.apply_dns(j, "lo", ["10.9.0.1", "fd09::1"], ["corp.example."], use_resolved=True)
    assert calls == [
        ["dns", "lo", "10.9.0.1", "fd09::1"],
        ["domain", "lo", "~.", "corp.example"],
        ["default-route", "lo", "true"],
    ]
    assert j.undo_all() == [] and calls[-1] == ["revert", "lo"]
    calls.clear()
    dns._revert_resolved("nosuchlink0")  # link gone: nothing to revert
    assert calls == []


def test_crash_leaves_a_journal_that_a_fresh_process_undoes(site):
    etc = site.c.etc_dir()
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write("nameserver 192.168.5.1\n")
    before = site.snapshot()
    res = site.python(f"""
        routing.apply_full_tunnel(j, 'wg0', {FWMARK}, {{4}})
        routing.apply_mss_clamp(j, 'wg0')
        killswitch.apply_killswitch(j, 'wg0', {FWMARK}, [('192.168.5.1', 51820)])
        dns.apply_dns(j, 'wg0', ['10.9.0.1'], use_resolved=False)
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert res.returncode != 0
    assert site.snapshot() != before
    assert site.send(INTERNET6).startswith("refused")

    reopened = Journal.open(site.journal)
    assert [s["kind"] for s in reopened.steps][-1] == "dns.resolv_conf"
    assert site.undo() == []
    assert site.snapshot() == before
    assert site.send(INTERNET4) == "sent" and site.counts("i4") == (0, 1)




def test_is_full_tunnel():
    assert netconfig.is_full_tunnel(["0.0.0.0/0", "::/0"]) == (True, True)
    assert netconfig.is_full_tunnel(["0.0.0.0/0", "fd00::/8"]) == (True, False)
    assert netconfig.is_full_tunnel(["0.0.0.0/1", "128.0.0.0/1", " ::/0"]) == (False, True)
    assert netconfig.is_full_tunnel([]) == (False, False)


def test_names_refused_before_any_change():
    with pytest.raises(ValueError):
        nft.table_name("ks", 'wg0" accept')
    with pytest.raises(ValueError):
        nft.delete_table("inet", "filter")  # never another owner's table
