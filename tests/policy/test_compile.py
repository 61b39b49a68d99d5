"""The compiler: disjoint boxes, classes, and the kernel's lookups agreeing with decide()."""

from __future__ import annotations

import ipaddress
import random
import subprocess

import pytest

from server.policy import (LOGIN_ONLY, ClientRef, PolicyError, Resolver, compile_policy, compile_ruleset, decide,
                           load_policy)
from server.policy.compile import Compiled
from server.policy.intervals import disjoint_boxes, merge_intervals
from tests.policy.randompolicy import GATEWAY, random_packet, random_scenario, scale_scenario


def test_merge_intervals():
    assert merge_intervals([(5, 9), (1, 2), (3, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]


def test_disjoint_boxes_cover_exactly_the_union():
    rng = random.Random(7)
    for _ in range(400):
        boxes = []
        for _ in range(rng.randint(1, 7)):
            a, b = sorted(rng.randint(0, 15) for _ in range(2))
            p, q = sorted(rng.randint(0, 15) for _ in range(2))
            boxes.append((a, b, p, q))
        out = disjoint_boxes(boxes)
        for x in range(17):
            for y in range(17):
                inside = sum(a <= x <= b and p <= y <= q for a, b, p, q in out)
                assert inside == any(a <= x <= b and p <= y <= q for a, b, p, q in boxes), (boxes, out, x, y)


def test_disjoint_boxes_stay_few():
    lan, db = (0, 255, 0, 65535), (5, 5, 22, 22)
    assert disjoint_boxes([lan, (300, 300, 22, 22), db]) == [lan, (300, 300, 22, 22)]
    assert sorted(disjoint_boxes([(0, 255, 22, 22), (5, 5, 5432, 5432)])) == [(0, 255, 22, 22), (5, 5, 5432, 5432)]


def kernel_accepts(compiled: Compiled, clients: dict[str, ClientRef], src: str | None, dst: str,
                   port: int | None, proto: str) -> bool | None:
    """What the compiled chains and sets answer, walked the way the kernel walks them (None: unsendable)."""
    gw = GATEWAY
    addr = ipaddress.ip_address(dst)
    dns53 = proto in ("tcp", "udp") and port == 53
    if addr in ipaddress.ip_network("224.0.0.0/3") or addr in ipaddress.ip_network("ff00::/8"):
        return False
    chain = "unknown"
    if src is not None:
        nets = [n for n in clients[src].networks if n.version == addr.version]
        if not nets:
            return None  # no source address of that family: the client cannot send it
        source = nets[0].network_address
        chain = compiled.targets.get(str(source)) or next(
            (t for a, t in compiled.targets.items() if "/" in a and source in ipaddress.ip_network(a)), "unknown")
    if addr in gw.addresses and any(s.proto == proto and s.port == port for s in gw.local_services):
        return True
    if chain in (LOGIN_ONLY, "unknown"):
        return dns53 and addr in gw.dns_servers
    cls = {c.chain: c for c in compiled.classes}[chain]
    if dns53:
        if cls.dns is not None:
            return addr in cls.dns
        if addr in gw.dns_servers:
            return True
    return cls.accepts(addr, proto, port)


def test_compiled_sets_agree_with_decide_on_random_policies():
    rng = random.Random(99)
    compared = 0
    for _ in range(150):
        sc = random_scenario(rng)
        policy = load_policy(sc.text, "random.hujson")
        compiled = compile_policy(policy, sc.clients, ifname="wg0", gateway=GATEWAY)
        resolver = Resolver(policy, sc.clients)
        clients = {c.name: c for c in sc.clients}
        for _ in range(60):
            src, dst, port, proto = random_packet(rng, sc)
            want = decide(policy, resolver, src, dst, port, proto, GATEWAY).accept
            got = kernel_accepts(compiled, clients, src, dst, port, proto)
            if got is not None:
                assert got == want, (sc.text, src, dst, port, proto)
                compared += 1
    assert compared > 6000


POLICY = """{
  "hosts": {"lan": "10.1.0.0/24"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["lan:22,80"]},
    {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["lan:22"]},
    {"action": "accept", "src": ["carol"], "dst": ["lan:443"]},
  ],
  "dns": {"group:temp": ["10.1.0.53"]},
}"""


def test_classes_are_shared_and_login_is_one_map_element():
    clients = [ClientRef("alice", ["10.8.0.2", "fd08::2"], {"eng"}), ClientRef("bob", ["10.8.0.3"], {"eng"}),
               ClientRef("carol", ["10.8.0.4"], {"eng"}), ClientRef("dave", ["10.8.0.5"], {"temp"}),
               ClientRef("erin", ["10.8.0.6"], {"eng"}, admitted=False), ClientRef("site", ["10.9.0.0/24"])]
    c = compile_policy(load_policy(POLICY), clients, ifname="wg0", gateway=GATEWAY)
    by_chain = {k.chain: k.clients for k in c.classes}
    assert sorted(by_chain.values()) == [["alice", "bob", "erin"], ["carol"], ["dave"], ["site"]]
    assert c.class_of["10.8.0.2"] == c.class_of["fd08::2"] == c.class_of["10.8.0.6"]
    assert c.targets["10.8.0.6"] == LOGIN_ONLY and c.targets["10.8.0.2"] == c.class_of["10.8.0.2"]
    assert c.targets["10.9.0.0/24"] == c.class_of["10.9.0.0/24"]
    assert c.names["fd08::2"] == "alice"
    text = c.ruleset
    assert "10.8.0.6 : jump login_only" in text and "10.9.0.0/24 : jump class_" in text
    # Rules 0 and 1 overlap (lan:22): the set holds disjoint elements only.
    eng = next(k for k in c.classes if "alice" in k.clients)
    carol = next(k for k in c.classes if "carol" in k.clients)
    [group_set] = [lk.port_set[4] for lk in eng.lookups]
    assert f"ip daddr . meta l4proto . th dport @{group_set} goto accepted" in text
    # Admitted host addresses (not erin, not the subnet) have the fast path of judged flows.
    valid4 = text.split("set valid4 {")[1].split("}")[0]
    assert "10.8.0.2 . $GEN" in valid4 and "10.8.0.6" not in valid4 and "10.9.0.0" not in valid4
    assert c.sets[group_set].count("10.1.0.0/24 . tcp . 22") == 1
    assert eng.lookups[0].port_set[6] is None and f"set {group_set} {{" in text
    # carol is in eng and named by a rule of her own: her class looks up eng's set, then hers.
    assert [lk.port_set[4] for lk in carol.lookups][0] == group_set and len(carol.lookups) == 2
    assert len(c.sets) == 3  # eng's and carol's port sets, carol's ICMP set (her rule has no proto)
    assert compile_ruleset(load_policy(POLICY), list(reversed(clients)), ifname="wg0",
                           gateway_addresses=["10.8.0.1/24", "fd08::1/64"], dns_servers=["10.8.0.1"],
                           local_services=["tcp/8443"]) == text  # deterministic


def test_clients_sharing_an_address_are_refused():
    clients = [ClientRef("a", ["10.8.0.2"]), ClientRef("b", ["10.8.0.2"])]
    with pytest.raises(PolicyError, match="both have the address 10.8.0.2"):
        compile_policy(load_policy("{}"), clients, ifname="wg0")
    clients = [ClientRef("a", ["10.9.0.0/24"]), ClientRef("b", ["10.9.0.0/25"])]
    with pytest.raises(PolicyError, match="overlapping subnets"):
        compile_policy(load_policy("{}"), clients, ifname="wg0")
    with pytest.raises(PolicyError, match="client 'a': bad address '10.9.0.1/24'"):
        compile_policy(load_policy("{}"), [ClientRef("a", ["10.9.0.1/24"])], ifname="wg0")


@pytest.mark.netns
def test_compiled_ruleset_is_accepted_by_nft(netns_factory):
    """`nft -c -f` (check only) on compiled random policies, in a namespace of ours."""
    topo = netns_factory("plc")
    ns = topo.netns("nft")
    rng = random.Random(5)
    for i in range(12):
        sc = random_scenario(rng)
        text = compile_ruleset(load_policy(sc.text), sc.clients, ifname="wg0",
                               gateway_addresses=["10.8.0.1/24", "fd08::1/64"], dns_servers=["10.8.0.1", "fd08::1"],
                               local_services=["tcp/8443", "udp/5353"])
        res = ns.run(["nft", "-c", "-f", "-"], input=text, check=False)
        assert res.returncode == 0, (sc.text, res.stderr)
    # A large one: long rule lists per class, hundreds of sets.
    text, clients = scale_scenario(200, 150)
    big = compile_policy(load_policy(text), clients, ifname="tun0", gateway=GATEWAY).ruleset
    res = ns.run(["nft", "-c", "-f", "-"], input=big, check=False, timeout=120)
    assert res.returncode == 0, res.stderr[:2000]
    res = ns.run(["nft", "list", "tables"])
    assert res.stdout == ""  # check mode changed nothing


def test_nothing_runs_nft_when_compiling(monkeypatch):
    """Compiling is pure: it must work without nft or root (the CLI's check runs it anywhere)."""
    def refuse(*a, **k):
        raise AssertionError("compile ran a command")
    monkeypatch.setattr(subprocess, "run", refuse)
    compile_policy(load_policy(POLICY), [ClientRef("a", ["10.8.0.2"], {"eng"})], ifname="wg0")


def test_a_client_in_many_groups_gets_one_merged_lookup():
    rules = ",".join(f'{{"action": "accept", "src": ["group:g{i}"], "dst": ["10.1.0.{i}:{i + 1}"]}}' for i in range(6))
    policy = load_policy(f'{{"acls": [{rules}]}}')
    few = ClientRef("few", ["10.8.0.2"], {"g0", "g1"})
    many = ClientRef("many", ["10.8.0.3"], {f"g{i}" for i in range(6)})
    c = compile_policy(policy, [few, many], ifname="wg0")
    by_client = {k.clients[0]: k for k in c.classes}
    assert len(by_client["few"].lookups) == 2  # the sets of g0 and g1, shared with any other class
    assert len(by_client["many"].lookups) == 1  # more than MAX_LOOKUPS principals: one merged set
    assert all(by_client["many"].accepts(ipaddress.ip_address(f"10.1.0.{i}"), "tcp", i + 1) for i in range(6))
