"""The server's NAT gateway, for real, in namespaces; and its undo.

    #   [a] a-g --+
    #   10.8.0.2  |  wg0 (bridge)  [g]  g-i ----------- i-g [i]
    #   fd08::2   +-- 10.8.0.1/24       203.0.113.1/24       203.0.113.2/24
    #   [b] b-g --+   fd08::1/64        2001:db8:5::1/64     2001:db8:5::2/64
    #   10.8.0.3                                             "the internet" (no route back to 10.8/24)
    #   fd08::3

"wg0" in [g] stands in for the tunnel interface: a bridge, so that a packet
from one client to another is *routed* by [g] in and out of the same
interface (the clients have /32 addresses and a default via 10.8.0.1), as it
is when the data plane writes a decrypted packet for another peer to its TUN.
[i] and [b] count what reaches them with nft counters on their ingress.
"""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.netns

POOLS = ["10.8.0.0/24", "fd08::/64"]
SYSCTLS = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]

PRELUDE = """
import json, sys
from tunnel.undo import Journal
from server import gateway
j = Journal.open(sys.argv[1])
"""

PROBE_I = """
table netdev tunnel_probe {
  chain in {
    type filter hook ingress device "i-g" priority 0;
    meta protocol ip ip saddr 203.0.113.1 udp dport 9 counter comment "nat4"
    meta protocol ip ip saddr 10.8.0.0/24 counter comment "raw4"
    meta protocol ip6 ip6 saddr 2001:db8:5::1 udp dport 9 counter comment "nat6"
    meta protocol ip6 ip6 saddr fd08::/64 counter comment "raw6"
    meta protocol ip ip daddr 198.18.0.5 counter comment "site"
  }
}
"""

PROBE_B = """
table netdev tunnel_probe {
  chain in {
    type filter hook ingress device "b-g" priority 0;
    meta protocol ip ip saddr 10.8.0.2 udp dport 9 counter comment "c2c"
  }
}
"""

SEND = """
import socket, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"probe", (dst, 9))
"""


class Gateway:
    def __init__(self, topo, tmp_path):
        self.a, self.b, self.g, self.i = (topo.netns(n) for n in "abgi")
        self.g.run(["ip", "link", "add", "name", "wg0", "type", "bridge"])
        self.g.addr("wg0", "10.8.0.1/24")
        self.g.addr("wg0", "fd08::1/64")
        self.g.link_up("wg0")
        self.g.sysctl("net.ipv4.conf.all.send_redirects", 0)
        for ns, n in ((self.a, 2), (self.b, 3)):
            mine, theirs = ns.link_veth(self.g, [f"10.8.0.{n}/32", f"fd08::{n}/128"], None)
            self.g.run(["ip", "link", "set", theirs, "master", "wg0"])
            ns.route("default", "via", "10.8.0.1", "dev", mine, "onlink")
            ns.route("-6", "default", "via", "fd08::1", "dev", mine, "onlink")
        self.g.link_veth(self.i, ["203.0.113.1/24", "2001:db8:5::1/64"], ["203.0.113.2/24", "2001:db8:5::2/64"])
        self.i.run(["nft", "-f", "-"], input=PROBE_I)
        self.b.run(["nft", "-f", "-"], input=PROBE_B)
        self.journal = str(tmp_path / "state" / "wg0.json")
        for ns in (self.a, self.b, self.g, self.i):
            ns.wait_dad()

    def python(self, code: str):
        return self.g.python(PRELUDE + textwrap.dedent(code), self.journal)

    def undo(self) -> list[str]:
        return json.loads(self.python("print(json.dumps(j.undo_all()))").stdout.strip().splitlines()[-1])

    def send(self, ns, dst: str) -> None:
        ns.python(SEND, dst)

    def seen(self, ns, comment: str) -> int:
        return ns.nft_counter("netdev", "tunnel_probe", "in", comment)

    def snapshot(self) -> dict:
        return self.g.state(sysctls=SYSCTLS)


@pytest.fixture
def gw(netns_factory, tmp_path):
    return Gateway(netns_factory("gw"), tmp_path)


def test_gateway_masquerades_isolates_clients_and_undoes_twice(gw):
    before = gw.snapshot()
    assert before["sysctl"] == {k: "0" for k in SYSCTLS}
    gw.send(gw.a, "203.0.113.2")
    assert gw.seen(gw.i, "nat4") == 0 and gw.seen(gw.i, "raw4") == 0  # not forwarding yet

    gw.python(f"gateway.apply_gateway(j, 'wg0', {POOLS!r}, masquerade=True, "
              "allow_client_to_client=False, site_routes=[('198.18.0.0/24', '203.0.113.2')])")
    assert gw.snapshot()["sysctl"] == {k: "1" for k in SYSCTLS}

    gw.send(gw.a, "203.0.113.2")
    gw.send(gw.a, "2001:db8:5::2")
    gw.send(gw.b, "198.18.0.5")  # a site subnet behind the router [i]
    assert (gw.seen(gw.i, "nat4"), gw.seen(gw.i, "raw4")) == (2, 0)
    assert (gw.seen(gw.i, "nat6"), gw.seen(gw.i, "raw6")) == (1, 0)
    assert gw.seen(gw.i, "site") == 1

    gw.send(gw.a, "10.8.0.3")
    assert gw.seen(gw.b, "c2c") == 0
    assert int(gw.python("print(gateway.client_to_client_dropped('wg0'))").stdout.split()[-1]) == 1

    assert gw.undo() == [] and gw.undo() == []
    assert gw.snapshot() == before


def test_client_to_client_when_allowed_and_no_masquerade(gw):
    before = gw.snapshot()
    gw.python(f"gateway.apply_gateway(j, 'wg0', {POOLS[:1]!r}, masquerade=False, allow_client_to_client=True)")
    gw.send(gw.a, "10.8.0.3")
    assert gw.seen(gw.b, "c2c") == 1
    gw.send(gw.a, "203.0.113.2")
    assert (gw.seen(gw.i, "nat4"), gw.seen(gw.i, "raw4")) == (0, 1)
    # Only the IPv4 pool: IPv6 forwarding was left alone.
    assert gw.snapshot()["sysctl"] == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"}
    assert gw.undo() == [] and gw.snapshot() == before


def test_forwarding_set_by_someone_else_is_not_restored_from_under_them(gw):
    gw.g.sysctl("net.ipv4.ip_forward", 1)
    gw.python(f"gateway.apply_gateway(j, 'wg0', {POOLS!r}, True, False)")
    assert gw.undo() == []
    assert gw.snapshot()["sysctl"] == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"}
