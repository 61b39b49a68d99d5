"""The policy file's meaning and its refusals: each names the line and what is wrong."""

from __future__ import annotations

import ipaddress

import pytest

from server.policy import load_policy
from server.policy.errors import PolicyError
from server.policy.targets import ALL_PORTS, parse_rate

GOOD = """{
  // who is who
  "groups": {"group:eng": ["alice", "bob"], "group:empty": []},
  "hosts": {
    "db": "10.1.0.5",
    "lan": "10.1.0.0/24",
    "v6lan": "fd01::/64",
  },
  "acls": [
    {"action": "accept", "src": ["group:eng", "carol"], "proto": "tcp",
     "dst": ["db:5432", "lan:22,80,8000-8999", "[fd01::1]:443", "10.2.0.0/16:*"]},
    {"action": "accept", "src": ["*"], "proto": "icmp", "dst": ["*:*"]},
    {"action": "accept", "src": ["group:mgmt"], "dst": ["alice:22", "group:eng:*", "[fd01::/64]:53"]},
  ],
  "tests": [
    {"src": "alice", "accept": ["db:5432"], "deny": ["db:22"]},
    {"src": "group:eng", "proto": "icmp", "accept": ["db:*"]},
  ],
  "bandwidth": {"group:temp": {"down": "5mbit", "up": "2mbit"}, "alice": {"down": "1.5gbit"}},
  "dns": {"group:temp": ["10.1.0.53", "fd01::53"]},
}
"""


def test_a_full_policy_loads():
    p = load_policy(GOOD, "policy.hujson")
    assert set(p.groups) == {"eng", "empty"} and p.groups["eng"].members == ("alice", "bob")
    assert p.hosts["lan"].network == ipaddress.ip_network("10.1.0.0/24")
    r0, r1, r2 = p.rules
    assert (r0.index, r0.line, r1.line, r2.line) == (0, 10, 12, 13)
    assert [str(s) for s in r0.src] == ["group:eng", "carol"]
    assert r0.protos == {"tcp"} and r2.protos == {"tcp", "udp", "icmp"}
    assert [d.ports for d in r0.dst] == [((5432, 5432),), ((22, 22), (80, 80), (8000, 8999)),
                                        ((443, 443),), ALL_PORTS]
    assert [d.target.kind for d in r0.dst] == ["host", "host", "net", "net"]
    assert [d.target.kind for d in r2.dst] == ["client", "group", "net"]
    assert r2.dst[1].target.name == "eng"
    assert p.tests[0].accept[0].port == 5432 and p.tests[1].accept[0].port is None
    assert p.bandwidth["group:temp"].down == 5_000_000 and p.bandwidth["group:temp"].up == 2_000_000
    assert p.bandwidth["alice"].down == 1_500_000_000 and p.bandwidth["alice"].up is None
    assert [str(a) for a in p.dns["group:temp"].servers] == ["10.1.0.53", "fd01::53"]


def test_no_acls_means_deny_everything():
    assert load_policy("{}").rules == ()


def _acl(dst: str = '"db:22"', extra: str = "") -> str:
    return ('{\n  "hosts": {"db": "10.1.0.5"},\n  "acls": [\n'
            f'    {{"action": "accept", "src": ["alice"], "dst": [{dst}]{extra}}},\n  ],\n}}\n')


BAD = [
    # (policy text, line, message)
    (_acl('"db:99999"'), 4, "dst 'db:99999': port 99999 out of range (0-65535)"),
    (_acl('"db:80-22"'), 4, "port range 80-22 runs backwards"),
    (_acl('"db:ssh"'), 4, "'ssh' is not a port or a port range"),
    (_acl('"db:"'), 4, "no port after ':'"),
    (_acl('"db"'), 4, "expected HOST:PORTS"),
    (_acl('"db:22,*"'), 4, "'*' cannot be combined"),
    (_acl('"fd01::1:22"'), 4, "IPv6 addresses in brackets"),
    (_acl('"[fd01::1]22"'), 4, "expected ':PORTS' after ']'"),
    (_acl('"[10.0.0.1]:22"'), 4, "brackets are for IPv6"),
    (_acl('"10.1.0.5/24:22"'), 4, "has host bits set (the network is 10.1.0.0/24)"),
    (_acl('"300.1.1.1:22"'), 4, "is not a valid name"),
    (_acl('"tag:web:22"'), 4, "Tailscale's tags are not supported"),
    (_acl('"group::22"'), 4, "bad group name"),
    (_acl('"db:22"', ', "proto": "sctp"'), 4, "proto 'sctp' is not supported"),
    (_acl('"db:22"', ', "proto": "icmp"'), 4, "ICMP has no ports; use db:*"),
    (_acl('"db:22"', ', "dts": ["x:1"]'), 4, "unknown key 'dts'"),
    (_acl('"db:22"', ', "ports": ["x:1"]'), 4, "use 'dst' instead of the legacy 'ports'"),
    (_acl("22"), 4, "each entry of acls[0] dst must be a string, not number"),
    ('{"acls": [{"action": "drop", "src": ["*"], "dst": ["*:*"]}]}', 1, "action must be \"accept\""),
    ('{"acls": [\n{"src": ["*"], "dst": ["*:*"]}]}', 2, "missing 'action'"),
    ('{"acls": [\n{"action": "accept", "src": [], "dst": ["*:*"]}]}', 2, "acls[0] src is empty"),
    ('{"hosts": {"db": "10.1.0.5"},\n"acls": [{"action": "accept",\n "src": ["db"], "dst": ["*:*"]}]}', 3,
     "src 'db' is a host"),
    ('{"acls": [{"action": "accept",\n "src": ["10.8.0.2"], "dst": ["*:*"]}]}', 2,
     "sources are clients, not addresses"),
    ('{"acls": {}}', 1, "acls must be an array, not object"),
    ('{\n"acl": []}', 2, "unknown section 'acl'"),
    ('{\n\n"ssh": []}', 3, "section 'ssh' is Tailscale's"),
    ('{"hosts": {\n"db": "10.1.0.5/24"}}', 2, "has host bits set"),
    ('{"hosts": {\n"db": "db.example.com"}}', 2, "is not an IP address or CIDR"),
    ('{"hosts": {\n"10.1.0.5": "10.1.0.5"}}', 2, "is not a usable host name"),
    ('{"groups": {\n"eng": ["a"]}}', 2, "must start with 'group:'"),
    ('{"groups": {"group:a": [\n"group:b"]}}', 2, "groups cannot contain groups"),
    ('{"groups": {"group:a": ["x",\n"x"]}}', 2, "'x' listed twice"),
    ('{"tests": [\n{"src": "alice"}]}', 2, "needs 'accept' or 'deny'"),
    ('{"tests": [{"src": "alice",\n "accept": ["db:22-23"]}]}', 2, "a test names one port"),
    ('{"hosts": {"lan": "10.1.0.0/24"}, "tests": [{"src": "alice",\n "accept": ["lan:22"]}]}', 2,
     "lan is the subnet 10.1.0.0/24; test one address"),
    ('{"tests": [{"src": "alice", "proto": "icmp",\n "accept": ["10.1.0.5:22"]}]}', 2, "ICMP has no ports"),
    ('{"tests": [{\n"src": "*", "accept": ["10.1.0.5:22"]}]}', 2, "src must be one client or group:NAME"),
    ('{"bandwidth": {\n"group:t": {"down": "5"}}}', 2, "give a unit, e.g. '5mbit'"),
    ('{"bandwidth": {"group:t": {\n"down": "5 parsecs"}}}', 2, "unknown unit 'parsecs'"),
    ('{"bandwidth": {"group:t": {"down": "5mbit",\n "sideways": "1mbit"}}}', 2, "unknown key 'sideways'"),
    ('{"bandwidth": {"group:t":\n {}}}', 2, "give 'down', 'up' or both"),
    ('{"bandwidth": {\n"*": {"down": "1mbit"}}}', 2, "keys are group:NAME or a client name"),
    ('{"dns": {"group:t": [\n"dns.example.com"]}}', 2, "is not an IP address"),
    ('{"dns": {"group:t":\n []}}', 2, "is empty"),
]


@pytest.mark.parametrize("text,line,message", BAD)
def test_refusals_name_the_line_and_the_problem(text, line, message):
    with pytest.raises(PolicyError) as err:
        load_policy(text, "policy.hujson")
    assert (err.value.line, err.value.filename) == (line, "policy.hujson"), str(err.value)
    assert message in err.value.message, str(err.value)
    assert str(err.value) == f"policy.hujson:{line}: {err.value.message}"


@pytest.mark.parametrize("text,bits", [
    ("5mbit", 5_000_000), ("500kbit", 500_000), ("1.5gbit", 1_500_000_000), ("1Mbit", 1_000_000),
    ("100bps", 800), ("2mbps", 16_000_000), ("1kibit", 1024), ("1mibps", 8 * 2**20),
])
def test_rates_in_tc_units(text, bits):
    assert parse_rate(text, "rate") == bits


def test_clients_with_the_same_groups_share_one_set():
    from server.policy.clients import ClientRef

    a = ClientRef("a", ["10.8.0.2"], frozenset({"eng", "group:ops"}))
    b = ClientRef("b", ["10.8.0.3"], ["ops", "eng"])
    c = ClientRef("c", ["10.8.0.4"])
    assert a.groups == frozenset({"eng", "ops"}) and a.groups is b.groups
    assert c.groups == frozenset() and c.groups is ClientRef("d", ["10.8.0.5"]).groups
