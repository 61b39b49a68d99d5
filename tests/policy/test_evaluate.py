"""decide(), the file's tests, explain and per-client settings."""

from __future__ import annotations

import random

import pytest

from server.policy import (ClientRef, GatewayContext, PolicyError, Resolver, check_policy, client_settings, decide,
                           explain, load_policy, run_tests)
from server.policy.reasons import Reason
from tests.policy.randompolicy import GATEWAY, random_packet, random_scenario, reference


def test_decide_agrees_with_the_naive_reference_on_random_policies():
    rng = random.Random(20261201)
    checked = accepted = 0
    for _ in range(200):
        sc = random_scenario(rng)
        policy = load_policy(sc.text, "random.hujson")
        resolver = Resolver(policy, sc.clients)
        for _ in range(60):
            src, dst, port, proto = random_packet(rng, sc)
            want, rule = reference(sc, src, dst, port, proto)
            got = decide(policy, resolver, src, dst, port, proto, GATEWAY)
            assert (got.accept, got.rule.index if got.rule else None) == (want, rule), (
                sc.text, src, dst, port, proto, got)
            checked += 1
            accepted += want
    # The generator must exercise both verdicts, or the comparison proves little.
    assert 0.15 < accepted / checked < 0.85


CLIENTS = [
    ClientRef("alice", ["10.8.0.2", "fd08::2"], frozenset({"eng"})),
    ClientRef("bob", ["10.8.0.3"], frozenset({"eng", "mgmt"})),
    ClientRef("carol", ["10.8.0.4"], frozenset({"temp"})),
    ClientRef("dave", ["10.8.0.5"], frozenset({"temp"}), admitted=False),
]
GW = GatewayContext.make(["10.8.0.1/24"], ["10.8.0.1"], ["tcp/8443"])

POLICY = """{
  "hosts": {"db": "10.1.0.5", "lan": "10.1.0.0/24", "web": "fd01::80"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["db:5432"]},
    {"action": "accept", "src": ["group:mgmt"], "dst": ["lan:*", "alice:22"]},
    {"action": "accept", "src": ["*"], "proto": "tcp", "dst": ["[fd01::80]:443", "10.1.0.9:80"]},
  ],
  "tests": [
    {"src": "alice", "accept": ["db:5432", "web:443"], "deny": ["db:22"]},
    {"src": "bob", "proto": "icmp", "accept": ["alice:*", "db:*"]},
    {"src": "carol", "accept": ["10.1.0.53:53"], "deny": ["db:5432", "10.8.0.1:53"]},
  ],
  "dns": {"group:temp": ["10.1.0.53"]},
  "bandwidth": {"group:temp": {"down": "5mbit", "up": "2mbit"}, "group:eng": {"down": "50mbit"},
                "bob": {"up": "1mbit"}},
}
"""


def test_decisions_and_their_reasons():
    p = load_policy(POLICY, "policy.hujson")
    d = decide(p, CLIENTS, "alice", "10.1.0.5", 5432, "tcp", GW)
    assert (d.verdict, d.reason, d.rule.index, d.rule.line) == ("accept", Reason.RULE, 0, 4)
    assert decide(p, CLIENTS, "alice", "10.1.0.5", 5432, "udp", GW).reason is Reason.DEFAULT
    # A rule without proto opens ICMP to its destinations whatever its ports (Tailscale's rule).
    assert decide(p, CLIENTS, "bob", "10.8.0.2", None, "icmp", GW).rule.index == 1
    assert decide(p, CLIENTS, "alice", "10.1.0.5", None, "icmp", GW).reason is Reason.DEFAULT
    # DNS: the pushed server for everyone, except a group with its own servers.
    assert decide(p, CLIENTS, "alice", "10.8.0.1", 53, "udp", GW).reason is Reason.GATEWAY_DNS
    assert decide(p, CLIENTS, "carol", "10.1.0.53", 53, "tcp", GW).reason is Reason.GROUP_DNS
    assert decide(p, CLIENTS, "carol", "10.8.0.1", 53, "udp", GW).reason is Reason.DNS
    # Not logged in: the pushed DNS and the local services only.
    assert decide(p, CLIENTS, "dave", "10.1.0.9", 80, "tcp", GW).reason is Reason.LOGIN
    assert decide(p, CLIENTS, "dave", "10.8.0.1", 53, "udp", GW).reason is Reason.GATEWAY_DNS
    assert decide(p, CLIENTS, "dave", "10.8.0.1", 8443, "tcp", GW).reason is Reason.LOCAL_SERVICE
    assert decide(p, CLIENTS, None, "10.1.0.9", 80, "tcp", GW).reason is Reason.UNKNOWN
    assert decide(p, CLIENTS, "nobody", "10.1.0.9", 80, "tcp", GW).reason is Reason.UNKNOWN
    with pytest.raises(ValueError):
        decide(p, CLIENTS, "alice", "10.1.0.9", None, "tcp", GW)


def test_the_files_tests_pass():
    p = load_policy(POLICY, "policy.hujson")
    assert run_tests(p, CLIENTS, GW) == []
    assert check_policy(p, CLIENTS, GW) == []


def test_failing_tests_name_the_line_and_what_decided():
    p = load_policy(POLICY.replace('"deny": ["db:22"]', '"deny": ["db:22", "10.1.0.9:80"]')
                    .replace('"accept": ["alice:*", "db:*"]', '"accept": ["alice:*",\n "10.2.0.9:*"]'),
                    "policy.hujson")
    assert run_tests(p, CLIENTS, GW) == [
        "policy.hujson:9: tests[0]: alice -> 10.1.0.9:80 (10.1.0.9, tcp/udp): expected deny, got accept by "
        "acls[2] (line 6): * -> [fd01::80]:443, 10.1.0.9:80 proto tcp",
        "policy.hujson:11: tests[1]: bob -> 10.2.0.9:* (10.2.0.9, icmp): expected accept, got deny: "
        "default deny: no rule accepts it",
    ]


def test_a_client_not_logged_in_does_not_fail_the_tests():
    p = load_policy('{"acls": [{"action": "accept", "src": ["dave"], "dst": ["10.1.0.9:80"]}],'
                    ' "tests": [{"src": "dave", "accept": ["10.1.0.9:80"]}]}')
    assert run_tests(p, CLIENTS, GW) == []


def test_check_reports_names_that_match_no_client():
    p = load_policy("""{
  "groups": {"group:x": ["alice", "zed"]},
  "acls": [{"action": "accept", "src": ["group:nobody", "ghost"],
            "dst": ["phantom:22", "group:empty:*", "group:x:*"]}],
  "tests": [{"src": "ghost", "accept": ["alice:22"]}],
  "bandwidth": {"group:none": {"down": "1mbit"}},
}""", "p.hujson")
    assert check_policy(p, CLIENTS) == [
        "p.hujson:2: group:x member 'zed' is not a client",
        "p.hujson:3: group:nobody has no clients",
        "p.hujson:3: 'ghost' is not a client",
        "p.hujson:4: 'phantom' is neither a host nor a client",
        "p.hujson:4: group:empty has no clients",
        "p.hujson:6: group:none has no clients",
        "p.hujson:5: tests[0]: src ghost has no clients",
    ]


def test_explain_prints_the_verdict_and_the_rule():
    p = load_policy(POLICY, "policy.hujson")
    lines = [str(e) for e in explain(p, CLIENTS, "alice", "db:5432", GW)]
    assert lines == [
        "alice -> db = 10.1.0.5:5432/tcp: accept by acls[0] (line 4): group:eng -> db:5432 proto tcp",
        "alice -> db = 10.1.0.5:5432/udp: deny: default deny: no rule accepts it",
    ]
    assert [str(e) for e in explain(p, CLIENTS, "bob", "alice", GW)] == [
        "bob -> alice = 10.8.0.2 (icmp): accept by acls[1] (line 5): group:mgmt -> lan:*, alice:22",
        "bob -> alice = fd08::2 (icmp): accept by acls[1] (line 5): group:mgmt -> lan:*, alice:22",
    ]
    assert [str(e) for e in explain(p, CLIENTS, "carol", "[fd01::80]:443/tcp", GW)] == [
        "carol -> [fd01::80]:443/tcp: accept by acls[2] (line 6): * -> [fd01::80]:443, 10.1.0.9:80 proto tcp"]
    assert [str(e) for e in explain(p, CLIENTS, "carol", "10.8.0.1:53/udp", GW)] == [
        "carol -> 10.8.0.1:53/udp: deny: DNS only to the servers the policy's dns section gives this client"]
    for bad, message in [("db:99999", "not a port"), ("lan:22", "is the subnet"), ("nowhere:1", "is not an address"),
                         ("db/tcp", "tcp needs a port"), ("db:22/icmp", "ICMP has no ports")]:
        with pytest.raises(PolicyError, match=message):
            explain(p, CLIENTS, "alice", bad, GW)
    with pytest.raises(PolicyError, match="'mallory' is not a client"):
        explain(p, CLIENTS, "mallory", "db:22", GW)


def test_client_settings_bandwidth_and_dns():
    p = load_policy(POLICY, "policy.hujson")
    s = client_settings(p, CLIENTS)
    assert (s["alice"].bandwidth.down, s["alice"].bandwidth.up) == (50_000_000, None)
    assert (s["bob"].bandwidth.down, s["bob"].bandwidth.up) == (None, 1_000_000)  # its own entry wins
    assert (s["carol"].bandwidth.down, s["carol"].bandwidth.up) == (5_000_000, 2_000_000)
    assert [str(a) for a in s["carol"].dns] == ["10.1.0.53"] and s["alice"].dns is None
    both = client_settings(p, [ClientRef("eve", ["10.8.0.9"], frozenset({"temp", "eng"}))])["eve"]
    # The most generous limit per direction among the groups that set one.
    assert (both.bandwidth.down, both.bandwidth.up) == (50_000_000, 2_000_000)
    assert client_settings(p, [ClientRef("zoe", ["10.8.0.10"])])["zoe"].bandwidth is None


def test_tests_of_a_group_without_members_run_as_its_first_member_would():
    p = load_policy("""{
  "hosts": {"db": "10.1.0.5"},
  "acls": [{"action": "accept", "src": ["group:newhires"], "proto": "tcp", "dst": ["db:5432"]}],
  "tests": [{"src": "group:newhires", "accept": ["db:5432"], "deny": ["db:22"]}],
}""", "p.hujson")
    assert run_tests(p, CLIENTS) == []
    wrong = load_policy("""{
  "hosts": {"db": "10.1.0.5"},
  "acls": [{"action": "accept", "src": ["group:newhires"], "proto": "tcp", "dst": ["db:5432"]}],
  "tests": [{"src": "group:newhires", "accept": ["db:22"]}],
}""", "p.hujson")
    assert len(run_tests(wrong, CLIENTS)) == 1
