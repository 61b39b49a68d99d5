"""The access policy enforced by the kernel, for real: a router, three clients in three groups, a site LAN.

    [c1] eng   10.8.0.2 fd08::2 --+                                  +-- [h1] 10.1.0.11 fd01::11
    [c2] ops   10.8.0.3 fd08::3 --+-- tun0 (bridge) [r] lan0 (bridge) -+
    [c3] temp  10.8.0.4 fd08::4 --+   10.8.0.1/24         10.1.0.1/24  +-- [h2] 10.1.0.12 fd01::12
                                      fd08::1/64          fd01::1/64

"tun0" in [r] stands in for the tunnel interface: a bridge, so that a
packet from one client to another is routed by [r] in and out of the same
interface (the clients have /32 and /128 addresses and default routes via
[r]), as when the data plane writes a decrypted packet to its TUN. The
policy table matches `iifname "tun0"` exactly as it would on a server.
[r] runs a DNS stand-in (UDP echo on 10.8.0.1:53, the pushed server), a
"login" service on tcp/8443, and tcp/22 (the gateway itself as a
destination). Every other host echoes on TCP and UDP ports.

Probes are short (about a second for a denied one) and run in parallel.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time

from click.testing import CliRunner

import pytest

from server.policy import (ClientRef, DenyLog, GatewayContext, PolicyCheckError, apply_policy, decide,
                           deny_counters, load_policy, remove, set_client_target, LOGIN_ONLY)
from server.policy import kernel
from server.policy.cli import ApplyTarget, PolicyEnv, policy_group
from server.policy.reasons import Reason
from tests.netns import Netns, topology
from tests.policy.netprobe import (REACH_TIMEOUT, EchoServers, echoes, pings, probe_all, tcp_connect, tcp_reaches,
                                   udp_reaches)

R = REACH_TIMEOUT  # for probes that must succeed
from tunnel.undo import Journal

pytestmark = pytest.mark.netns

IFNAME = "tun0"
GATEWAY = GatewayContext.make(["10.8.0.1/24", "fd08::1/64"], ["10.8.0.1"], ["tcp/8443"])
CLIENTS = [
    ClientRef("c1", ["10.8.0.2", "fd08::2"], frozenset({"eng"})),
    ClientRef("c2", ["10.8.0.3", "fd08::3"], frozenset({"ops"})),
    ClientRef("c3", ["10.8.0.4", "fd08::4"], frozenset({"temp"})),
]
ADDR = {"c1": "10.8.0.2", "c2": "10.8.0.3", "c3": "10.8.0.4", "h1": "10.1.0.11", "h2": "10.1.0.12",
        "r": "10.8.0.1", "h1v6": "fd01::11", "c1v6": "fd08::2"}

POLICY = """{
  "hosts": {"h1": "10.1.0.11", "h2": "10.1.0.12", "lan": "10.1.0.0/24", "h1v6": "fd01::11"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["h1:22,80", "[fd01::11]:22"]},
    {"action": "accept", "src": ["group:eng"], "proto": "udp", "dst": ["h1:5000"]},
    {"action": "accept", "src": ["group:eng"], "proto": "icmp", "dst": ["h1:*"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["lan:8000-8100", "group:eng:22"]},
    {"action": "accept", "src": ["group:temp"], "proto": "tcp", "dst": ["h2:80"]},
  ],
  "dns": {"group:temp": ["10.1.0.12"]},
  "tests": [
    {"src": "group:eng", "accept": ["h1:22", "h1:80", "h1v6:22"], "deny": ["h2:80", "h1:8000"]},
    {"src": "group:ops", "accept": ["h1:8000", "c1:22"], "deny": ["h1:22"]},
    {"src": "group:temp", "accept": ["h2:80", "h2:53"], "deny": ["h1:80", "10.8.0.1:53"]},
  ],
}"""

# (client, destination, port, proto) -> accepted? Written out by hand from POLICY above.
MATRIX = [
    ("c1", "h1", 22, "tcp", True), ("c1", "h1", 80, "tcp", True), ("c1", "h1", 8000, "tcp", False),
    ("c1", "h1", 5000, "udp", True), ("c1", "h1", 8000, "udp", False), ("c1", "h1", None, "icmp", True),
    ("c1", "h2", 80, "tcp", False), ("c1", "h2", None, "icmp", False), ("c1", "h1v6", 22, "tcp", True),
    ("c1", "h1v6", 80, "tcp", False), ("c1", "h1v6", None, "icmp", False), ("c1", "c2", 22, "tcp", False),
    ("c1", "r", 53, "udp", True), ("c1", "r", 8443, "tcp", True), ("c1", "r", 22, "tcp", False),
    ("c2", "h1", 8000, "tcp", True), ("c2", "h1", 8101, "tcp", False), ("c2", "h1", 8000, "udp", True),
    ("c2", "h1", 22, "tcp", False), ("c2", "h1", None, "icmp", True), ("c2", "h2", 8100, "tcp", True),
    ("c2", "h2", 80, "tcp", False), ("c2", "c1", 22, "tcp", True), ("c2", "c1", 22, "udp", True),
    ("c2", "c1", None, "icmp", True), ("c2", "c1v6", 22, "tcp", True), ("c2", "c3", 22, "tcp", False),
    ("c2", "r", 53, "udp", True), ("c2", "r", 22, "tcp", False),
    ("c3", "h2", 80, "tcp", True), ("c3", "h2", 53, "udp", True), ("c3", "h2", 8100, "tcp", False),
    ("c3", "h1", 80, "tcp", False), ("c3", "h2", None, "icmp", False), ("c3", "r", 53, "udp", False),
    ("c3", "h1", 53, "udp", False), ("c3", "r", 8443, "tcp", True), ("c3", "c1", 22, "tcp", False),
]


class Lab:
    def __init__(self, topo, tmp_path) -> None:
        self.r = topo.netns("r")
        self.ns: dict[str, Netns] = {n: topo.netns(n) for n in ("c1", "c2", "c3", "h1", "h2")}
        r = self.r
        for bridge, addrs in (("tun0", ["10.8.0.1/24", "fd08::1/64"]), ("lan0", ["10.1.0.1/24", "fd01::1/64"])):
            r.run(["ip", "link", "add", "name", bridge, "type", "bridge"])
            for a in addrs:
                r.addr(bridge, a)
            r.link_up(bridge)
        r.enable_forwarding()
        # A TUN has no layer 2: bridged frames must not meet the IP hooks (br_netfilter's default).
        r.sysctl("net.bridge.bridge-nf-call-iptables", 0)
        r.sysctl("net.bridge.bridge-nf-call-ip6tables", 0)
        for key in ("all", "default", "tun0"):
            r.sysctl(f"net.ipv4.conf.{key}.send_redirects", 0)
        for i, name in enumerate(("c1", "c2", "c3"), 2):
            ns = self.ns[name]
            mine, theirs = ns.link_veth(r, [f"10.8.0.{i}/32", f"fd08::{i}/128"], None)
            r.run(["ip", "link", "set", theirs, "master", "tun0"])
            ns.route("default", "via", "10.8.0.1", "dev", mine, "onlink")
            ns.route("-6", "default", "via", "fd08::1", "dev", mine, "onlink")
            # [r] redirects IPv6 clients to each other (same link): they must keep going through [r].
            for key in ("all", "default", mine):
                ns.sysctl(f"net.ipv6.conf.{key}.accept_redirects", 0)
                ns.sysctl(f"net.ipv4.conf.{key}.accept_redirects", 0)
        for i, name in ((11, "h1"), (12, "h2")):
            ns = self.ns[name]
            _, theirs = ns.link_veth(r, [f"10.1.0.{i}/24", f"fd01::{i}/64"], None)
            r.run(["ip", "link", "set", theirs, "master", "lan0"])
            ns.route("default", "via", "10.1.0.1")
            ns.route("-6", "default", "via", "fd01::1")
        self.servers = [EchoServers(self.ns[h], tcp=(22, 80, 8000, 8100, 8101), udp=(53, 5000, 8000))
                        for h in ("h1", "h2")]
        self.servers += [EchoServers(self.ns[c], tcp=(22,), udp=(22,)) for c in ("c1", "c2", "c3")]
        self.servers.append(EchoServers(r, tcp=(22, 53, 8443), udp=(53,)))
        self.journal = Journal.open(str(tmp_path / "tun0.json"))

    def apply(self, text: str, clients=CLIENTS, name: str = "policy.hujson"):
        with self.r.entered():
            return apply_policy(self.journal, load_policy(text, name), clients, ifname=IFNAME, gateway=GATEWAY)

    def listing(self) -> str:
        """The table as the kernel holds it, without what changes by itself (timeouts, counters)."""
        with self.r.entered():
            text = kernel.listing(IFNAME)
        text = re.sub(r" expires \S+", "", text)
        return re.sub(r"counter packets \d+ bytes \d+", "counter", text)

    def tables(self) -> str:
        return self.r.run(["nft", "list", "tables"]).stdout

    def close(self) -> None:
        for s in self.servers:
            s.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with topology("plk") as topo:
        lab = Lab(topo, tmp_path_factory.mktemp("policy"))
        try:
            yield lab
        finally:
            lab.close()
            with lab.r.entered():
                failures = lab.journal.undo_all()
            assert failures == []


def test_each_group_reaches_exactly_what_the_policy_accepts(lab):
    compiled = lab.apply(POLICY)
    assert compiled.warnings == []
    cases = [(lab.ns[c], ADDR[d], port, proto) for c, d, port, proto, _ in MATRIX]
    # ... and nothing new toward clients from the site, even where a client listens.
    inbound = [("h1", "c1", 22, "tcp"), ("h1", "c1", 22, "udp"), ("h1", "c1", None, "icmp"),
               ("h2", "c3", 22, "tcp"), ("h1", "c1v6", 22, "tcp")]
    cases += [(lab.ns[h], ADDR[c], port, proto) for h, c, port, proto in inbound]
    seen = probe_all(cases, expect=[m[4] for m in MATRIX] + [False] * len(inbound))
    got = {m[:4]: s for m, s in zip(MATRIX, seen)}
    assert got == {m[:4]: m[4] for m in MATRIX}
    assert seen[len(MATRIX):] == [False] * len(inbound)
    # explain/decide says what the packets did.
    for (c, d, port, proto, _), s in zip(MATRIX, seen):
        assert decide(compiled_policy(), CLIENTS, c, ADDR[d], port, proto, GATEWAY).accept == s, (c, d, port, proto)


def compiled_policy():
    return load_policy(POLICY, "policy.hujson")


def test_a_new_policy_cuts_denied_connections_and_keeps_accepted_ones(lab):
    lab.apply(POLICY)
    kept = tcp_connect(lab.ns["c2"], ADDR["h1"], 8000, R)  # ops -> lan:8000-8100, stays accepted
    cut = tcp_connect(lab.ns["c1"], ADDR["h1"], 80, R)  # eng -> h1:80, about to be denied
    assert kept and cut and echoes(kept, R) and echoes(cut, R)
    before = lab.servers[0].received[(ADDR["c1"], 80)]
    try:
        lab.apply(POLICY.replace('"h1:22,80"', '"h1:22"').replace('"h1:80", ', ""))
        # The next packet of the established connection is dropped: no echo within a second,
        # and the server never sees the bytes.
        assert not echoes(cut, timeout=1.0)
        assert lab.servers[0].received[(ADDR["c1"], 80)] == before
        assert echoes(kept, R)
        assert not tcp_reaches(lab.ns["c1"], ADDR["h1"], 80)
        assert tcp_reaches(lab.ns["c1"], ADDR["h1"], 22, R)
    finally:
        kept.close()
        cut.close()
        lab.apply(POLICY)


def test_a_policy_whose_tests_fail_is_refused_and_the_old_one_stays(lab):
    lab.apply(POLICY)
    before = lab.listing()
    bad = POLICY.replace('"deny": ["h2:80", "h1:8000"]', '"deny": ["h2:80", "h1:80"]')
    with pytest.raises(PolicyCheckError, match=r"policy.hujson:\d+: tests\[0\]: c1 -> h1:80"):
        lab.apply(bad)
    assert lab.listing() == before
    assert tcp_reaches(lab.ns["c1"], ADDR["h1"], 80, R)


def test_denied_attempts_are_counted_and_logged_with_the_client_name(lab):
    lab.apply(POLICY)
    records: list[str] = []
    got_it = threading.Event()

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
            if "c3 (10.8.0.4) -> 10.1.0.11:80/tcp" in record.getMessage():
                got_it.set()

    logger = logging.getLogger("tunnel.test.policy")
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # The per-source log limits outlive re-applies, and earlier tests spent c3's: start afresh.
    for fam in (4, 6):
        lab.r.run(["nft", "flush", "set", "inet", "tunnel_acl_tun0", f"logrl{fam}"])
    with lab.r.entered():
        before = deny_counters(IFNAME, CLIENTS)
        reader = DenyLog(IFNAME, kernel_log_group(), {"10.8.0.4": "c3", "10.8.0.2": "c1"}, logger=logger)
    try:
        assert not tcp_reaches(lab.ns["c3"], ADDR["h1"], 80)
        assert not udp_reaches(lab.ns["c3"], ADDR["r"], 53)  # DNS elsewhere than temp's server
        assert not tcp_reaches(lab.ns["h1"], ADDR["c1"], 22)  # toward a client: counted for that client
        assert got_it.wait(10), records
    finally:
        reader.close()
    with lab.r.entered():
        after = deny_counters(IFNAME, CLIENTS)
    assert after.by_client["c3"] >= before.by_client["c3"] + 2
    grew = lambda c, r: after.by_client_reason[c].get(r, 0) - before.by_client_reason[c].get(r, 0)  # noqa: E731
    assert grew("c3", "default") >= 1 and grew("c3", "dns") >= 1
    assert grew("c1", "inbound") >= 1 and grew("c1", "default") == 0
    assert after.by_client["c2"] == before.by_client["c2"]
    assert after.by_reason["default"] > before.by_reason["default"]
    assert after.by_reason["dns"] > before.by_reason["dns"]
    assert "tun0: denied c3 (10.8.0.4) -> 10.1.0.11:80/tcp: default deny: no rule accepts it" in records
    # Counts survive a re-apply (only the rules and the maps are replaced).
    lab.apply(POLICY)
    with lab.r.entered():
        again = deny_counters(IFNAME, CLIENTS)
    assert again.by_client["c3"] >= after.by_client["c3"]
    assert again.by_reason["dns"] >= after.by_reason["dns"]


def kernel_log_group() -> int:
    from server.policy import default_log_group

    return default_log_group(IFNAME)


def test_one_map_element_moves_a_client_to_login_only_and_back(lab):
    compiled = lab.apply(POLICY)
    home = compiled.class_of["10.8.0.2"]
    established = tcp_connect(lab.ns["c1"], ADDR["h1"], 80, R)
    assert established and echoes(established, R)  # judged once, then on the fast path
    with lab.r.entered():
        set_client_target(IFNAME, "10.8.0.2", LOGIN_ONLY)
        assert kernel.client_target(IFNAME, "10.8.0.2") == LOGIN_ONLY
    try:
        # Logging out takes the client's flows off the fast path: the open connection stops.
        assert not echoes(established, timeout=1.0)
        established.close()
        want = [False, True, True, True]  # only IPv4 was moved
        assert probe_all([(lab.ns["c1"], ADDR["h1"], 80, "tcp"), (lab.ns["c1"], ADDR["r"], 53, "udp"),
                          (lab.ns["c1"], ADDR["r"], 8443, "tcp"), (lab.ns["c1"], "fd01::11", 22, "tcp")], want) == want
        assert decide(compiled_policy(), [ClientRef("c1", ["10.8.0.2"], {"eng"}, admitted=False)],
                      "c1", ADDR["h1"], 80, "tcp", GATEWAY).reason is Reason.LOGIN
        with lab.r.entered():
            set_client_target(IFNAME, "10.8.0.2", None)  # no element: the unknown chain
            assert kernel.client_target(IFNAME, "10.8.0.2") is None
        assert not tcp_reaches(lab.ns["c1"], ADDR["h1"], 80)
        assert udp_reaches(lab.ns["c1"], ADDR["r"], 53, R)
    finally:
        with lab.r.entered():
            set_client_target(IFNAME, "10.8.0.2", home)
    assert tcp_reaches(lab.ns["c1"], ADDR["h1"], 80, R)


def test_clients_not_logged_in_compile_to_login_only(lab):
    clients = [ClientRef("c1", ["10.8.0.2", "fd08::2"], {"eng"}, admitted=False)] + CLIENTS[1:]
    lab.apply(POLICY, clients)
    try:
        want = [False, True, True]
        assert probe_all([(lab.ns["c1"], ADDR["h1"], 22, "tcp"), (lab.ns["c1"], ADDR["r"], 8443, "tcp"),
                          (lab.ns["c2"], ADDR["h1"], 8000, "tcp")], want) == want
    finally:
        lab.apply(POLICY)


def test_removal_leaves_no_state_and_a_reapply_works(lab):
    lab.apply(POLICY)
    assert "tunnel_acl_tun0" in lab.tables()
    with lab.r.entered():
        remove(IFNAME)
        remove(IFNAME)  # idempotent
    assert lab.tables() == ""
    # Without our table the lab is open again (nothing of ours filters).
    assert tcp_reaches(lab.ns["c3"], ADDR["h1"], 80, R)
    with lab.r.entered():
        failures = lab.journal.undo_all()
    assert failures == [] and not lab.journal.pending
    lab.apply(POLICY)
    assert not tcp_reaches(lab.ns["c3"], ADDR["h1"], 80)
    with lab.r.entered():
        assert lab.journal.undo_all() == []
    assert lab.tables() == ""


def test_ipv6_and_ping_from_the_gateway_side(lab):
    lab.apply(POLICY)
    # The gateway's own traffic is not filtered (output), and replies from clients pass.
    assert pings(lab.r, "10.8.0.2", R) and pings(lab.r, "fd08::2", R)
    assert pings(lab.ns["c1"], ADDR["h1"], R) and not pings(lab.ns["c1"], "fd01::11")


def test_reapplying_never_leaves_a_moment_without_the_policy(lab):
    """Re-apply, alternating two policies, while c3 floods a port it may never reach and c1 one it may."""
    lab.apply(POLICY)
    # Both groups' sets change: every apply loads new lookup sets for c1's class too.
    other = POLICY.replace('{"action": "accept", "src": ["group:ops"], "dst": ["lan:8000-8100", "group:eng:22"]},',
                           '{"action": "accept", "src": ["group:ops"], "dst": ["lan:8000-8099"]},') \
                  .replace('"accept": ["h1:8000", "c1:22"]', '"accept": ["h1:8000"]') \
                  .replace('"h1:22,80"', '"h1:22,80,81"')
    assert other != POLICY
    h1 = lab.servers[0]
    stop = threading.Event()
    sent: dict[str, int] = {}

    def flood(name: str) -> None:
        with lab.ns[name].entered():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            while not stop.is_set():
                s.sendto(b"x", (ADDR["h1"], 5000))
                sent[name] = sent.get(name, 0) + 1
                time.sleep(0.001)

    before = {n: h1.datagrams.get((ADDR[n], 5000), 0) for n in ("c1", "c3")}
    threads = [threading.Thread(target=flood, args=(n,)) for n in ("c1", "c3")]
    for t in threads:
        t.start()
    try:
        for i in range(24):
            lab.apply(other if i % 2 == 0 else POLICY)
    finally:
        stop.set()
        for t in threads:
            t.join()
    Netns.wait_for(lambda: h1.datagrams.get((ADDR["c1"], 5000), 0) - before["c1"] >= sent["c1"], timeout=5,
                   what="c1's datagrams")
    assert h1.datagrams.get((ADDR["c3"], 5000), 0) == before["c3"]
    assert sent["c3"] > 100
    assert h1.datagrams[(ADDR["c1"], 5000)] - before["c1"] == sent["c1"]


def test_cli_apply_refuses_a_failing_policy_and_applies_a_good_one(lab, tmp_path):
    good, bad = tmp_path / "good.hujson", tmp_path / "bad.hujson"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace('"deny": ["h2:80", "h1:8000"]', '"deny": ["h2:80", "h1:80"]'))
    env = PolicyEnv(clients=lambda: CLIENTS, target=lambda: ApplyTarget(IFNAME, lab.journal, GATEWAY))
    with lab.r.entered():
        res = CliRunner().invoke(policy_group(env), ["apply", str(good)])
        assert res.exit_code == 0, res.output
        assert res.output.startswith(f"applied {good} to tun0: 3 class(es), ")
        before = lab.listing()
        res = CliRunner().invoke(policy_group(env), ["apply", str(bad)])
        assert res.exit_code == 1
        assert "refused, the previous policy stays in force" in res.output and "tests[0]: c1 -> h1:80" in res.output
        assert lab.listing() == before
        res = CliRunner().invoke(policy_group(env), ["counters"])
        assert res.exit_code == 0 and "client c1: " in res.output and "reason default: " in res.output
