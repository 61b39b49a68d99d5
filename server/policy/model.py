"""The policy file: the subset of Tailscale's policy syntax that applies to a gateway, validated.

    {
      "groups":    {"group:eng": ["alice", "bob"]},            // optional: the registry's groups count too
      "hosts":     {"db": "10.1.0.5", "office": "10.1.0.0/24", "v6lan": "fd01::/64"},
      "acls": [
        {"action": "accept", "src": ["group:eng"], "proto": "tcp", "dst": ["db:5432", "office:22,80"]},
        {"action": "accept", "src": ["*"], "dst": ["[fd01::53]:53"]},
      ],
      "tests":     [{"src": "alice", "accept": ["db:5432"], "deny": ["db:22"]}],
      "bandwidth": {"group:temp": {"down": "5mbit", "up": "2mbit"}},
      "dns":       {"group:temp": ["10.1.0.53"]},
    }

Rules kept here:
- what the file means is decided here, once: anything accepted is allowed,
  everything else is denied; `src` names clients only (`*` = every client,
  `group:NAME`, a client name); `dst` is HOST:PORTS where HOST is `*`, a
  hosts name, an address or CIDR, a client name or `group:NAME`; `proto`
  is tcp, udp or icmp, absent = all three, and ICMP takes no ports;
- every refusal is a PolicyError naming the file, the line of the value at
  fault and what is wrong with it; unknown keys are refused (a misspelt
  "dts" must not silently widen or narrow access);
- loading needs no registry: names that are not hosts are taken as client
  names, and whether they exist is checked against the clients later
  (`check`), so a file can be validated anywhere;
- the model is plain frozen data; nothing here resolves clients or runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import hujson, targets
from .errors import PolicyError
from .hujson import Node
from .targets import IPAddress, IPNetwork

GROUP_PREFIX_LEN = len(targets.GROUP_PREFIX)
SECTIONS = ("groups", "hosts", "acls", "tests", "bandwidth", "dns")
_TAILSCALE_ONLY = ("grants", "ssh", "sshTests", "tagOwners", "autoApprovers", "nodeAttrs", "postures",
                   "ipsets", "derpMap", "disableIPv4", "randomizeClientPort", "defaultSrcPosture")


@dataclass(frozen=True)
class Source:
    """Who a rule or test is about: kind 'any' (`*`), 'group' or 'client'."""

    kind: str
    name: str
    line: int

    def __str__(self) -> str:
        return {"any": "*", "group": f"group:{self.name}"}.get(self.kind, self.name)


@dataclass(frozen=True)
class Target:
    """The HOST of a destination: kind 'any', 'host' (a hosts name), 'net' (a literal), 'client' or 'group'.

    `networks` is filled for any/host/net; clients and groups are resolved
    against the registry's clients (resolve.py).
    """

    kind: str
    name: str
    networks: tuple[IPNetwork, ...]
    line: int

    def __str__(self) -> str:
        if self.kind == "group":
            return f"group:{self.name}"
        if self.kind == "net" and ":" in self.name:
            return f"[{self.name}]"
        return self.name


@dataclass(frozen=True)
class Destination:
    target: Target
    ports: tuple[tuple[int, int], ...]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Rule:
    """One entry of `acls`: index in the file's list, and its line."""

    index: int
    line: int
    src: tuple[Source, ...]
    protos: frozenset[str]
    proto_text: str | None
    dst: tuple[Destination, ...]

    def describe(self) -> str:
        proto = f" proto {self.proto_text}" if self.proto_text else ""
        return (f"acls[{self.index}] (line {self.line}): {', '.join(map(str, self.src))} -> "
                f"{', '.join(map(str, self.dst))}{proto}")


@dataclass(frozen=True)
class TestDestination:
    target: Target
    port: int | None  # None: '*' (ICMP tests)
    text: str
    line: int


@dataclass(frozen=True)
class PolicyTest:
    index: int
    line: int
    src: Source
    proto: str | None  # None: TCP and UDP
    accept: tuple[TestDestination, ...]
    deny: tuple[TestDestination, ...]


@dataclass(frozen=True)
class Bandwidth:
    """Per-member limits in bits per second; None = unlimited in that direction."""

    down: int | None
    up: int | None
    line: int = 0

    def __str__(self) -> str:
        fmt = lambda b: "unlimited" if b is None else targets.format_rate(b)  # noqa: E731
        return f"down {fmt(self.down)}, up {fmt(self.up)}"


@dataclass(frozen=True)
class GroupDef:
    name: str
    members: tuple[str, ...]
    line: int
    member_lines: tuple[int, ...]


@dataclass(frozen=True)
class HostDef:
    name: str
    network: IPNetwork
    line: int


@dataclass(frozen=True)
class DnsDef:
    servers: tuple[IPAddress, ...]
    line: int


@dataclass(frozen=True)
class Policy:
    filename: str
    groups: dict[str, GroupDef]  # bare group name -> members named in the file
    hosts: dict[str, HostDef]
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...]
    bandwidth: dict[str, Bandwidth]  # 'group:NAME' or a client name
    dns: dict[str, DnsDef]  # 'group:NAME' or a client name
    bandwidth_lines: dict[str, int]

    def where(self, line: int) -> str:
        return f"{self.filename}:{line}"


def load_policy(text: str, filename: str = "policy.hujson") -> Policy:
    """Parse and validate a policy file; raise PolicyError ("FILE:LINE: what") on the first problem."""
    root = hujson.parse(text, filename)
    return _Loader(filename).policy(root)


class _Loader:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.hosts: dict[str, HostDef] = {}

    def fail(self, node_or_line: Node | int, message: str) -> PolicyError:
        line = node_or_line if isinstance(node_or_line, int) else node_or_line.line
        return PolicyError(message, self.filename, line)

    def expect(self, node: Node, kind: str, what: str) -> None:
        if node.kind != kind:
            article = "an" if kind[0] in "aeiou" else "a"
            raise self.fail(node, f"{what} must be {article} {kind}, not {node.kind}")

    def guarded(self, node: Node, parse: Callable[[], object]):
        try:
            return parse()
        except ValueError as exc:
            raise self.fail(node, str(exc)) from None

    def keys(self, node: Node, allowed: tuple[str, ...], what: str) -> None:
        for key, line in node.key_lines.items():
            if key not in allowed:
                raise self.fail(line, f"{what}: unknown key {key!r} (expected {', '.join(allowed)})")

    def strings(self, node: Node, what: str, allow_empty: bool = False) -> list[Node]:
        self.expect(node, "array", what)
        for item in node.value:
            self.expect(item, "string", f"each entry of {what}")
        if not node.value and not allow_empty:
            raise self.fail(node, f"{what} is empty")
        return node.value

    # -- sections -------------------------------------------------------------

    def policy(self, root: Node) -> Policy:
        self.expect(root, "object", "the policy")
        for key, line in root.key_lines.items():
            if key in _TAILSCALE_ONLY:
                raise self.fail(line, f"section {key!r} is Tailscale's; this server does not support it "
                                      f"(supported: {', '.join(SECTIONS)})")
            if key not in SECTIONS:
                raise self.fail(line, f"unknown section {key!r} (supported: {', '.join(SECTIONS)})")
        sec = root.value
        groups = self.groups(sec["groups"]) if "groups" in sec else {}
        self.hosts = self.hosts_section(sec["hosts"]) if "hosts" in sec else {}
        rules = self.acls(sec["acls"]) if "acls" in sec else ()
        tests = self.tests(sec["tests"]) if "tests" in sec else ()
        bandwidth, bw_lines = self.bandwidth(sec["bandwidth"]) if "bandwidth" in sec else ({}, {})
        dns = self.dns(sec["dns"]) if "dns" in sec else {}
        return Policy(self.filename, groups, self.hosts, rules, tests, bandwidth, dns, bw_lines)

    def groups(self, node: Node) -> dict[str, GroupDef]:
        self.expect(node, "object", "groups")
        out: dict[str, GroupDef] = {}
        for key, members in node.value.items():
            line = node.key_lines[key]
            name = self.guarded(Node(key, line), lambda: targets.group_name(key, "group"))
            items = self.strings(members, f"{key}", allow_empty=True)
            names: list[str] = []
            for item in items:
                if item.value.startswith(targets.GROUP_PREFIX):
                    raise self.fail(item, f"{key}: groups cannot contain groups ({item.value!r})")
                if item.value == "*":
                    raise self.fail(item, f"{key}: '*' is not a member (list client names)")
                self.guarded(item, lambda: targets.check_name(item.value, f"{key} member"))
                if item.value in names:
                    raise self.fail(item, f"{key}: {item.value!r} listed twice")
                names.append(item.value)
            out[name] = GroupDef(name, tuple(names), line, tuple(i.line for i in items))
        return out

    def hosts_section(self, node: Node) -> dict[str, HostDef]:
        self.expect(node, "object", "hosts")
        out: dict[str, HostDef] = {}
        for key, value in node.value.items():
            line = node.key_lines[key]
            if key.startswith(targets.GROUP_PREFIX) or not targets.is_name(key):
                raise self.fail(line, f"hosts: {key!r} is not a usable host name "
                                      f"(letters, digits and . _ @ + -; not an address, not group:)")
            self.expect(value, "string", f"hosts {key!r}")
            net = self.guarded(value, lambda: targets.network(value.value, f"hosts {key!r}:"))
            out[key] = HostDef(key, net, value.line)
        return out

    def acls(self, node: Node) -> tuple[Rule, ...]:
        self.expect(node, "array", "acls")
        rules = []
        for index, item in enumerate(node.value):
            what = f"acls[{index}]"
            self.expect(item, "object", what)
            for legacy, modern in (("users", "src"), ("ports", "dst")):
                if legacy in item.value:
                    raise self.fail(item.key_lines[legacy], f"{what}: use {modern!r} instead of the legacy {legacy!r}")
            self.keys(item, ("action", "src", "proto", "dst"), what)
            for key in ("action", "src", "dst"):
                if key not in item.value:
                    raise self.fail(item, f"{what}: missing {key!r}")
            action = item.value["action"]
            if action.value != "accept":
                raise self.fail(action, f"{what}: action must be \"accept\" (anything not accepted is denied), "
                                        f"not {action.plain()!r}")
            src = tuple(self.source(s, f"{what} src") for s in self.strings(item.value["src"], f"{what} src"))
            protos, proto_text = frozenset(targets.PROTOCOLS), None
            if "proto" in item.value:
                p = item.value["proto"]
                self.expect(p, "string", f"{what} proto")
                if p.value not in targets.PROTOCOLS:
                    raise self.fail(p, f"{what}: proto {p.value!r} is not supported "
                                       f"(tcp, udp or icmp; leave it out for all three)")
                protos, proto_text = frozenset([p.value]), p.value
            dst = tuple(self.destination(d) for d in self.strings(item.value["dst"], f"{what} dst"))
            if proto_text == "icmp":
                for d, dnode in zip(dst, item.value["dst"].value):
                    if d.ports != targets.ALL_PORTS:
                        raise self.fail(dnode, f"{what}: dst {d.text!r}: ICMP has no ports; use {d.target}:*")
            rules.append(Rule(index, item.line, src, protos, proto_text, dst))
        return tuple(rules)

    def source(self, node: Node, what: str) -> Source:
        text = node.value
        if text == "*":
            return Source("any", "*", node.line)
        if text.startswith(targets.GROUP_PREFIX):
            return Source("group", self.guarded(node, lambda: targets.group_name(text, what)), node.line)
        if text in self.hosts:
            raise self.fail(node, f"{what} {text!r} is a host: sources are clients "
                                  f"(group:NAME, a client name or *)")
        if targets.looks_like_address(text):
            raise self.fail(node, f"{what} {text!r}: sources are clients, not addresses "
                                  f"(group:NAME, a client name or *)")
        self.guarded(node, lambda: targets.check_name(text, what))
        return Source("client", text, node.line)

    def target(self, node: Node, host: str, what: str) -> Target:
        if host == "*":
            return Target("any", "*", (targets.network("0.0.0.0/0", what), targets.network("::/0", what)), node.line)
        if host.startswith(targets.GROUP_PREFIX):
            return Target("group", self.guarded(node, lambda: targets.group_name(host, what)), (), node.line)
        if host in self.hosts:
            return Target("host", host, (self.hosts[host].network,), node.line)
        if "/" in host or targets.looks_like_address(host):
            net = self.guarded(node, lambda: targets.network(host, what))
            return Target("net", host, (net,), node.line)
        self.guarded(node, lambda: targets.check_name(host, f"{what}: host"))
        return Target("client", host, (), node.line)

    def destination(self, node: Node) -> Destination:
        spec = node.value
        host, ports_text = self.guarded(node, lambda: targets.split_host_ports(spec))
        target = self.target(node, host, f"dst {spec!r}:")
        ports = self.guarded(node, lambda: targets.parse_ports(ports_text, spec))
        return Destination(target, ports, spec)

    def tests(self, node: Node) -> tuple[PolicyTest, ...]:
        self.expect(node, "array", "tests")
        out = []
        for index, item in enumerate(node.value):
            what = f"tests[{index}]"
            self.expect(item, "object", what)
            self.keys(item, ("src", "proto", "accept", "deny"), what)
            if "src" not in item.value:
                raise self.fail(item, f"{what}: missing 'src'")
            if "accept" not in item.value and "deny" not in item.value:
                raise self.fail(item, f"{what}: needs 'accept' or 'deny' (or both)")
            src_node = item.value["src"]
            self.expect(src_node, "string", f"{what} src")
            src = self.source(src_node, f"{what} src")
            if src.kind == "any":
                raise self.fail(src_node, f"{what}: src must be one client or group:NAME, not '*'")
            proto = None
            if "proto" in item.value:
                p = item.value["proto"]
                self.expect(p, "string", f"{what} proto")
                if p.value not in targets.PROTOCOLS:
                    raise self.fail(p, f"{what}: proto {p.value!r} is not supported (tcp, udp or icmp)")
                proto = p.value
            lists = {}
            for key in ("accept", "deny"):
                nodes = self.strings(item.value[key], f"{what} {key}", allow_empty=True) if key in item.value else []
                lists[key] = tuple(self.test_destination(n, proto, f"{what} {key}") for n in nodes)
            out.append(PolicyTest(index, item.line, src, proto, lists["accept"], lists["deny"]))
        return tuple(out)

    def test_destination(self, node: Node, proto: str | None, what: str) -> TestDestination:
        spec = node.value
        host, port_text = self.guarded(node, lambda: targets.split_host_ports(spec))
        target = self.target(node, host, f"{what} {spec!r}:")
        if target.kind == "any":
            raise self.fail(node, f"{what} {spec!r}: test one destination, not '*'")
        for net in target.networks:
            if net.num_addresses != 1:
                raise self.fail(node, f"{what} {spec!r}: {host} is the subnet {net}; test one address")
        if proto == "icmp":
            if port_text != "*":
                raise self.fail(node, f"{what} {spec!r}: ICMP has no ports; write {host}:*")
            return TestDestination(target, None, spec, node.line)
        if not port_text.isdigit() or int(port_text) > targets.PORT_MAX:
            raise self.fail(node, f"{what} {spec!r}: a test names one port (0-{targets.PORT_MAX})")
        return TestDestination(target, int(port_text), spec, node.line)

    def keyed(self, key: str, line: int, what: str) -> str:
        """A bandwidth/dns key: 'group:NAME' or a client name."""
        if key.startswith(targets.GROUP_PREFIX):
            self.guarded(Node(key, line), lambda: targets.group_name(key, what))
        elif key == "*" or key in self.hosts:
            raise self.fail(line, f"{what}: {key!r}: keys are group:NAME or a client name")
        else:
            self.guarded(Node(key, line), lambda: targets.check_name(key, what))
        return key

    def bandwidth(self, node: Node) -> tuple[dict[str, Bandwidth], dict[str, int]]:
        self.expect(node, "object", "bandwidth")
        out: dict[str, Bandwidth] = {}
        lines: dict[str, int] = {}
        for key, value in node.value.items():
            line = node.key_lines[key]
            self.keyed(key, line, "bandwidth")
            what = f"bandwidth {key!r}"
            self.expect(value, "object", what)
            self.keys(value, ("down", "up"), what)
            if not value.value:
                raise self.fail(value, f"{what}: give 'down', 'up' or both (e.g. \"down\": \"5mbit\")")
            rates: dict[str, int | None] = {"down": None, "up": None}
            for direction, rate in value.value.items():
                self.expect(rate, "string", f"{what} {direction}")
                rates[direction] = self.guarded(rate, lambda: targets.parse_rate(rate.value, f"{what} {direction}"))
            out[key] = Bandwidth(rates["down"], rates["up"], line)
            lines[key] = line
        return out, lines

    def dns(self, node: Node) -> dict[str, DnsDef]:
        self.expect(node, "object", "dns")
        out: dict[str, DnsDef] = {}
        for key, value in node.value.items():
            line = node.key_lines[key]
            self.keyed(key, line, "dns")
            servers = []
            for item in self.strings(value, f"dns {key!r}"):
                addr = self.guarded(item, lambda: targets.address(item.value, f"dns {key!r}: server"))
                if addr not in servers:
                    servers.append(addr)
            out[key] = DnsDef(tuple(servers), value.line)
        return out
