"""The policy compiled to one nftables table: sets and verdict maps the kernel looks up.

    table inet tunnel_acl_IFACE
      input (hook)    iif IFACE: neighbour discovery: accept; then -> from_client
      forward (hook)  iif IFACE -> from_client;  oif IFACE -> to_client
      from_client     ct direction reply, ct state related: accept
                      saddr . ct mark @valid4/6 (judged under this generation, still admitted): accept
                      multicast or broadcast destination: drop (not counted)
                      daddr . l4proto . dport @local4/6 (the gateway's local services): accept
                      saddr vmap @clients4/6 (@clientnets4/6: routed subnets) -> class_N | login_only
                      no element -> unknown
      class_N         port 53: its own dns servers, or the gateway's; else deny_dns
                      daddr . l4proto . dport @p4_<hash>, one set per principal (`*`, a group, itself)
                      ICMP: daddr @i4_<hash> ...                           (each -> accepted)
                      -> deny_default
      accepted        the policy's bits of the ct mark := this generation; accept
      login_only      the gateway's DNS: accept; else -> deny_login   (unknown: the same, deny_unknown)
      to_client       ct direction reply, ct state related: accept; else -> deny_inbound
      deny_R          count per address in @deny_R4/6, NFLOG "R" (rate-limited), drop

Rules kept here:
- the cost per packet does not grow with the number of rules or clients:
  a packet of a judged flow costs one hash lookup (below); a flow's first
  packet costs one hash lookup of its source address, which picks the
  client's class chain, and one lookup in a concatenated interval set
  (daddr . l4proto . dport) per principal the client belongs to (`*`,
  each of its groups, itself: what rules name), at most MAX_LOOKUPS
  (merged beyond). Those interval lookups (nft_set_pipapo) do scan
  bitmaps as wide as the set, so they are kept to the first packet. Sets
  belong to principals, not to combinations of them: 1,000 clients in 10
  groups do not copy each group's set into every combination of groups;
  clients with the same principals and DNS share a class;
- the policy is judged on the packets of the conntrack ORIGINAL
  direction, not only on new connections: a judged flow carries the
  policy's generation in its conntrack mark (CT_MARK_MASK) and, while its
  source is admitted (@valid4/@valid6 hold "address . generation"), passes
  with one hash lookup; a re-apply moves to the next generation and a
  logout removes the client's pair, so the next packet of every
  established flow is judged again and a now-denied one stops there;
  replies pass;
- a client is moved between its class and `login_only` by changing its
  one element in @clients4/@clients6 (kernel.set_client_target): class
  chains exist for every client, logged in or not;
- the chain order here is the order of evaluate.decide (that module's
  docstring); `explain` must say what the kernel does;
- lookup sets are named after their content (p4_<hash>, i6_<hash>):
  kernel.apply loads new ones before the transaction that switches to
  them, and a set whose content did not change is not touched;
- the text is deterministic for the same input (sorted), so two compiles
  of one policy can be compared.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import zlib
from dataclasses import dataclass, field
from typing import Iterable

from tunnel import nft

from .clients import ClientRef, Resolver
from .context import GatewayContext
from .errors import PolicyError
from .evaluate import DNS_PORT, MULTICAST
from .intervals import Box, Interval, disjoint_boxes, host_bits, merge_intervals
from .model import Policy
from .reasons import DENY_REASONS, Reason
from .settings import dns_for
from .targets import IPAddress

LOGIN_ONLY = "login_only"
ACCEPTED = "accepted"
# The policy owns these bits of the conntrack mark: the generation under which a flow was last
# judged. A flow whose mark holds the current generation and whose source is still admitted passes
# with one hash lookup; any other is judged again (re-apply and logout bump or drop the pair).
# Other users of the conntrack mark must keep to the other bits.
CT_MARK_MASK = 0xFFFF0000
GENERATION_SHIFT = 16
FIRST_GENERATION = 1
# A class looks up one set per principal it belongs to (`*`, each of its groups, itself), so that
# groups share their sets instead of every combination of groups holding a copy; past this many,
# its class gets one merged set instead (a packet never costs more than this many lookups).
MAX_LOOKUPS = 4
UNKNOWN = "unknown"
FAMILY = "inet"
SET_SIZE = 65535
# Log at most this often per source address, and this often in all, so
# that a client hammering a denied port cannot flood the journal.
LOG_PER_SOURCE = "10/minute burst 5 packets"
LOG_TOTAL = "10/second burst 20 packets"
LOG_SNAPLEN = 128  # IP + transport headers are all the reader parses
_BITS = {4: 32, 6: 128}
_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}
_ICMP = {4: "icmp", 6: "ipv6-icmp"}


def table_name(ifname: str) -> str:
    return nft.table_name("acl", ifname)


def default_log_group(ifname: str) -> int:
    """An NFLOG group for IFACE: stable, and different for different interfaces (almost always)."""
    return 20000 + zlib.crc32(ifname.encode()) % 10000


@dataclass
class Lookup:
    """What one source principal accepts (the rules naming `*`, one group, or one client), as disjoint
    boxes and ICMP intervals per family; `port_set`/`icmp_set` name their nft sets (None: empty)."""

    rules: tuple[int, ...]
    ports: dict[int, list[tuple[str, Box]]]  # family -> (proto, disjoint box)
    icmp: dict[int, list[Interval]]  # family -> disjoint address intervals
    port_set: dict[int, str | None] = field(default_factory=dict)
    icmp_set: dict[int, str | None] = field(default_factory=dict)

    @property
    def content(self) -> tuple:
        return (tuple(self.ports[4]), tuple(self.ports[6]), tuple(self.icmp[4]), tuple(self.icmp[6]))

    def accepts(self, addr: IPAddress, proto: str, port: int | None) -> bool:
        a = int(addr)
        if proto == "icmp":
            return any(lo <= a <= hi for lo, hi in self.icmp[addr.version])
        return any(p == proto and alo <= a <= ahi and plo <= port <= phi
                   for p, (alo, ahi, plo, phi) in self.ports[addr.version])


@dataclass
class PolicyClass:
    """Clients that the policy treats alike: one chain, a few lookups (one per principal)."""

    chain: str
    clients: list[str]
    rules: tuple[int, ...]
    dns: tuple[IPAddress, ...] | None
    lookups: list[Lookup]

    def accepts(self, addr: IPAddress, proto: str, port: int | None) -> bool:
        """What the kernel's set lookups answer for a packet of this class (for tests)."""
        return any(lk.accepts(addr, proto, port) for lk in self.lookups)


@dataclass
class Compiled:
    """A compiled policy. `ruleset` is the whole table as one nft script; kernel.apply loads `sets`
    (the classes' lookup sets, named after their content) before it switches to `body` (the rest)."""

    table: str
    ifname: str
    classes: list[PolicyClass]
    class_of: dict[str, str]  # client address ("10.8.0.2", "fd08::2", "10.9.0.0/24") -> its class chain
    targets: dict[str, str]  # the same addresses -> what the map holds now (class chain or LOGIN_ONLY)
    names: dict[str, str]  # the same addresses -> client name (the log reader's lookup)
    log_group: int
    warnings: list[str] = field(default_factory=list)
    elements: dict[str, int] = field(default_factory=dict)  # element counts, for the benchmark
    sets: dict[str, str] = field(default_factory=dict)  # set name -> its declaration
    body: str = ""

    @property
    def ruleset(self) -> str:
        """The whole table as one script, at the first generation (kernel.apply picks the next one)."""
        parts = [generation_define(FIRST_GENERATION), f"table {FAMILY} {self.table} {{", *self.sets.values(),
                 self.body, "}"]
        return "\n".join(p for p in parts if p) + "\n"


def generation_define(generation: int) -> str:
    """The nft variable the body's `$GEN` stands for: GENERATION in the policy's bits of the ct mark."""
    return f"define GEN = {(generation << GENERATION_SHIFT) & CT_MARK_MASK:#010x}"


def compile_ruleset(policy: Policy, clients: Iterable[ClientRef], *, ifname: str, table: str | None = None,
                    gateway_addresses: Iterable[str] = (), dns_servers: Iterable[str] = (),
                    local_services: Iterable[str] = (), log_group: int | None = None) -> str:
    """The nft table text for POLICY applied to CLIENTS on IFNAME (see compile_policy)."""
    return compile_policy(policy, clients, ifname=ifname, table=table, gateway_addresses=gateway_addresses,
                          dns_servers=dns_servers, local_services=local_services, log_group=log_group).ruleset


def compile_policy(policy: Policy, clients: Iterable[ClientRef], *, ifname: str, table: str | None = None,
                   gateway_addresses: Iterable[str] = (), dns_servers: Iterable[str] = (),
                   local_services: Iterable[str] = (), log_group: int | None = None,
                   gateway: GatewayContext | None = None) -> Compiled:
    """Compile POLICY for CLIENTS. Names that match no client are skipped and listed in `warnings`."""
    nft.check_ifname(ifname)
    table = table or table_name(ifname)
    if gateway is None:
        try:
            gateway = GatewayContext.make(gateway_addresses, dns_servers, local_services)
        except ValueError as exc:
            raise PolicyError(f"gateway settings: {exc}") from None
    log_group = default_log_group(ifname) if log_group is None else log_group
    if not 0 <= log_group <= 65535:
        raise PolicyError(f"log group {log_group} out of range (0-65535)")
    resolver = Resolver(policy, clients)
    try:
        for c in resolver.clients:
            c.networks  # noqa: B018 - validates every address up front, with the client's name
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    classes, class_of, names = _classes(policy, resolver)
    targets = {a: (chain if resolver.client(names[a]).admitted else LOGIN_ONLY) for a, chain in class_of.items()}
    compiled = Compiled(table, ifname, classes, class_of, targets, names, log_group)
    _Writer(compiled, gateway).text()
    compiled.warnings = list(resolver.problems)
    return compiled


# -- classes -------------------------------------------------------------------


def _principal(src) -> tuple[str, str]:
    return ("any", "*") if src.kind == "any" else (src.kind, src.name)


def _classes(policy: Policy, resolver: Resolver) -> tuple[list[PolicyClass], dict[str, str], dict[str, str]]:
    spans: dict = {}
    rule_shapes = [_rule_shapes(policy, resolver, i, spans) for i in range(len(policy.rules))]
    by_principal: dict[tuple[str, str], list[int]] = {}
    for rule in policy.rules:
        for src in rule.src:
            indices = by_principal.setdefault(_principal(src), [])
            if rule.index not in indices:
                indices.append(rule.index)
    by_signature: dict[tuple, list[ClientRef]] = {}
    for c in resolver.clients:
        mine = [("any", "*"), *(("group", g) for g in sorted(resolver.groups_of(c))), ("client", c.name)]
        principals = tuple(p for p in mine if p in by_principal)
        by_signature.setdefault((principals, dns_for(policy, resolver, c)), []).append(c)
    lookups: dict[tuple[int, ...], Lookup] = {}
    by_content: dict[tuple, Lookup] = {}

    def lookup(rules: tuple[int, ...]) -> Lookup:
        if rules not in lookups:
            lk = _lookup(rules, rule_shapes)
            lookups[rules] = by_content.setdefault(lk.content, lk)
        return lookups[rules]

    classes: dict[tuple, PolicyClass] = {}
    for (principals, dns), members in by_signature.items():
        parts = [tuple(by_principal[p]) for p in principals]
        every = tuple(sorted({i for part in parts for i in part}))
        if len(parts) > MAX_LOOKUPS:  # a client in many groups: one merged lookup for its class
            parts = [every]
        mine = {id(lk): lk for lk in (lookup(part) for part in parts) if any(lk.content)}
        key = (tuple(sorted(mine)), dns)
        cls = classes.get(key)
        if cls is None:
            cls = classes[key] = PolicyClass("", [], every, dns, list(mine.values()))
        else:
            cls.rules = tuple(sorted(set(cls.rules) | set(every)))
        cls.clients.extend(c.name for c in members)
    ordered = sorted(classes.values(), key=lambda k: min(k.clients))
    class_of: dict[str, str] = {}
    names: dict[str, str] = {}
    for n, cls in enumerate(ordered, 1):
        cls.chain = f"class_{n}"
        cls.clients.sort()
        for name in cls.clients:
            for net in resolver.client(name).networks:
                key = str(net.network_address) if net.num_addresses == 1 else str(net)
                if key in names:
                    raise PolicyError(f"clients {names[key]!r} and {name!r} both have the address {key}")
                class_of[key] = cls.chain
                names[key] = name
    _check_subnets(names)
    return ordered, class_of, names


# TCP and UDP share one sweep: a UDP port p sits at UDP_OFFSET + p on the port axis.
UDP_OFFSET = 65536


def _lookup(rules: tuple[int, ...], rule_shapes) -> Lookup:
    ports: dict[int, list[tuple[str, Box]]] = {4: [], 6: []}
    icmp: dict[int, list[Interval]] = {4: [], 6: []}
    for fam in (4, 6):
        boxes = [b for i in rules for b in rule_shapes[i][0].get(fam, ())]
        for alo, ahi, plo, phi in sorted(disjoint_boxes(boxes), key=lambda b: (b[2] >= UDP_OFFSET, b)):
            if plo < UDP_OFFSET <= phi:  # merged across the seam: TCP up to 65535, then UDP from 0
                ports[fam].append(("tcp", (alo, ahi, plo, UDP_OFFSET - 1)))
                plo = UDP_OFFSET
            proto, base = ("udp", UDP_OFFSET) if plo >= UDP_OFFSET else ("tcp", 0)
            ports[fam].append((proto, (alo, ahi, plo - base, phi - base)))
        icmp[fam] = merge_intervals(iv for i in rules for iv in rule_shapes[i][1].get(fam, ()))
    for fam in (4, 6):  # TCP first, then UDP, each sorted (as the text shows them)
        ports[fam].sort(key=lambda pb: (pb[0] != "tcp", pb[1]))
    return Lookup(rules, ports, icmp)


def _check_subnets(names: dict[str, str]) -> None:
    """Client subnets go into an interval map, which refuses overlaps: say who overlaps whom."""
    nets = sorted((ipaddress.ip_network(k) for k in names if "/" in k), key=lambda n: (n.version, n))
    for a, b in zip(nets, nets[1:]):
        if a.version == b.version and a.overlaps(b):
            raise PolicyError(f"clients {names[str(a)]!r} ({a}) and {names[str(b)]!r} ({b}) have overlapping subnets")


def _rule_shapes(policy: Policy, resolver: Resolver, index: int, spans: dict):
    """A rule's (port boxes by family, TCP and UDP on one axis; ICMP intervals by family).

    Independent of the source; SPANS caches each destination's address intervals.
    """
    rule = policy.rules[index]
    boxes: dict[int, list[Box]] = {}
    icmp: dict[int, list[Interval]] = {}
    bases = [base for proto, base in (("tcp", 0), ("udp", UDP_OFFSET)) if proto in rule.protos]
    for d in rule.dst:
        key = (d.target.kind, d.target.name)
        if key not in spans:
            spans[key] = [(n.version, int(n.network_address), int(n.broadcast_address))
                          for n in resolver.networks(d.target)]
        for fam, lo, hi in spans[key]:
            boxes.setdefault(fam, []).extend((lo, hi, base + plo, base + phi) for base in bases for plo, phi in d.ports)
            if "icmp" in rule.protos:
                icmp.setdefault(fam, []).append((lo, hi))
    return boxes, icmp


# -- text ----------------------------------------------------------------------


def _addr(fam: int, value: int) -> str:
    # inet_ntop: the same text as ipaddress's str(), ten times faster (a big policy formats 100,000)
    if fam == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    if value >> 32 in (0, 0xFFFF):  # inet_ntop writes these with a dotted quad; keep ipaddress's text
        return str(ipaddress.IPv6Address(value))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def _addr_range(fam: int, lo: int, hi: int) -> str:
    if lo == hi:
        return _addr(fam, lo)
    bits = host_bits(lo, hi)
    if bits is not None:
        return f"{_addr(fam, lo)}/{_BITS[fam] - bits}"
    return f"{_addr(fam, lo)}-{_addr(fam, hi)}"


def _port_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _elements(items: list[str]) -> str:
    return "elements = { " + ",\n\t\t\t".join(items) + " }" if items else ""


class _Writer:
    """Builds Compiled.sets (the content-named rule sets) and Compiled.body (everything else)."""

    def __init__(self, compiled: Compiled, gateway: GatewayContext) -> None:
        self.c = compiled
        self.gw = gateway
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}

    def emit(self, *lines: str) -> None:
        self.lines.extend(lines)

    def set_decl(self, kind: str, name: str, type_: str, flags: str, items: list[str], count_as: str) -> list[str]:
        body = [f"type {type_}"]
        if flags:
            body.append(f"flags {flags}")
        if items:
            body.append(_elements(items))
        self.counts[count_as] = self.counts.get(count_as, 0) + len(items)
        return [f"\t{kind} {name} {{", *(f"\t\t{b}" for b in body), "\t}"]

    def rule_set(self, prefix: str, fam: int, type_: str, items: list[str], count_as: str) -> str | None:
        """A class's lookup set, named after its content: the same elements, the same name."""
        if not items:
            return None
        digest = hashlib.sha256("\n".join([type_, *items]).encode()).hexdigest()[:16]
        name = f"{prefix}{fam}_{digest}"
        if name not in self.c.sets:
            self.c.sets[name] = "\n".join(self.set_decl("set", name, type_, "interval", items, count_as))
        return name

    def text(self) -> None:
        c, gw = self.c, self.gw
        iface = c.ifname
        for cls in c.classes:
            self.class_sets(cls)
        self.emit(*self.set_decl("set", "generation", "mark", "", ["$GEN"], "generation"))
        for fam in (4, 6):
            # Admitted clients' host addresses with the current generation: their judged flows' fast path.
            valid = sorted(ipaddress.ip_address(a) for a, t in c.targets.items()
                           if "/" not in a and t != LOGIN_ONLY and ipaddress.ip_address(a).version == fam)
            self.emit(*self.set_decl("set", f"valid{fam}", f"{_TYPE[fam]} . mark", "",
                                     [f"{a} . $GEN" for a in valid], "fast path"))
            for reason in DENY_REASONS:
                self.emit(f"\tset {reason.counter}{fam} {{ type {_TYPE[fam]}; size {SET_SIZE}; "
                          "flags dynamic; counter; }")
            self.emit(f"\tset logrl{fam} {{ type {_TYPE[fam]}; size {SET_SIZE}; flags dynamic,timeout; timeout 1m; }}")
            dns = [str(a) for a in gw.dns_servers if a.version == fam]
            self.emit(*self.set_decl("set", f"gwdns{fam}", _TYPE[fam], "", dns, "gateway dns"))
            local = [f"{a} . {s.proto} . {s.port}" for a in gw.addresses if a.version == fam
                     for s in gw.local_services]
            self.emit(*self.set_decl("set", f"local{fam}", f"{_TYPE[fam]} . inet_proto . inet_service", "", local,
                                     "local services"))
            nets = sorted((ipaddress.ip_network(a), t) for a, t in c.targets.items()
                          if ipaddress.ip_network(a).version == fam)
            self.emit(*self.set_decl("map", f"clients{fam}", f"{_TYPE[fam]} : verdict", "",
                                     [f"{n.network_address} : jump {t}" for n, t in nets if n.num_addresses == 1],
                                     "client map"))
            self.emit(*self.set_decl("map", f"clientnets{fam}", f"{_TYPE[fam]} : verdict", "interval",
                                     [f"{n} : jump {t}" for n, t in nets if n.num_addresses > 1], "client map"))
        for cls in c.classes:
            self.class_chain(cls)
        self.gate_chain(LOGIN_ONLY, Reason.LOGIN)
        self.gate_chain(UNKNOWN, Reason.UNKNOWN)
        for reason in DENY_REASONS:
            self.deny_chain(reason)
        self.emit(f"\tchain {ACCEPTED} {{",
                  f"\t\tct mark set ct mark and {~CT_MARK_MASK & 0xFFFFFFFF:#010x} or $GEN accept",
                  "\t}")
        self.emit("\tchain from_client {",
                  "\t\tct direction reply accept",
                  "\t\tct state related accept",
                  f"\t\tip saddr . ct mark and {CT_MARK_MASK:#010x} @valid4 accept",
                  f"\t\tip6 saddr . ct mark and {CT_MARK_MASK:#010x} @valid6 accept",
                  # Link-local chatter (MLD, router solicitations) is no attempt to reach anything:
                  # dropped before it is counted or logged.
                  f"\t\tip daddr {MULTICAST[4]} drop",
                  f"\t\tip6 daddr {MULTICAST[6]} drop")
        for fam in (4, 6):
            if self.counts.get("local services"):
                self.emit(f"\t\t{_IP[fam]} daddr . meta l4proto . th dport @local{fam} accept")
        subnets = any("/" in a for a in c.targets)
        for fam in (4, 6):
            self.emit(f"\t\t{_IP[fam]} saddr vmap @clients{fam}")
            if subnets:  # clients with a routed subnet: rare, and an interval lookup
                self.emit(f"\t\t{_IP[fam]} saddr vmap @clientnets{fam}")
        self.emit(f"\t\tgoto {UNKNOWN}", "\t}")
        self.emit("\tchain to_client {",
                  "\t\tct direction reply accept",
                  "\t\tct state related accept",
                  f"\t\tgoto deny_{Reason.INBOUND.value}",
                  "\t}")
        self.emit("\tchain input {",
                  "\t\ttype filter hook input priority filter; policy accept;",
                  # Neighbour discovery is link-local and never forwarded;
                  # a TUN never carries it, a test's veth stand-in does.
                  f'\t\tiifname "{iface}" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} '
                  "ip6 hoplimit 255 accept",
                  f'\t\tiifname "{iface}" jump from_client',
                  "\t}")
        self.emit("\tchain forward {",
                  "\t\ttype filter hook forward priority filter; policy accept;",
                  f'\t\tiifname "{iface}" jump from_client',
                  f'\t\toifname "{iface}" jump to_client',
                  "\t}")
        c.body = "\n".join(self.lines)
        c.elements = dict(self.counts)

    def class_sets(self, cls: PolicyClass) -> None:
        for lk in cls.lookups:
            if lk.port_set:
                continue  # shared with a class written before
            for fam in (4, 6):
                items = [f"{_addr_range(fam, alo, ahi)} . {proto} . {_port_range(plo, phi)}"
                         for proto, (alo, ahi, plo, phi) in lk.ports[fam]]
                lk.port_set[fam] = self.rule_set("p", fam, f"{_TYPE[fam]} . inet_proto . inet_service", items,
                                                 "rule elements")
                icmp = [_addr_range(fam, lo, hi) for lo, hi in lk.icmp[fam]]
                lk.icmp_set[fam] = self.rule_set("i", fam, _TYPE[fam], icmp, "icmp elements")

    def dns_rules(self, servers: tuple[IPAddress, ...] | None, accept: str) -> None:
        port53 = f"meta l4proto {{ tcp, udp }} th dport {DNS_PORT}"
        if servers is None:
            for fam in (4, 6):
                if any(a.version == fam for a in self.gw.dns_servers):
                    self.emit(f"\t\t{port53} {_IP[fam]} daddr @gwdns{fam} {accept}")
            return
        for fam in (4, 6):
            mine = [str(a) for a in servers if a.version == fam]
            if mine:
                self.emit(f"\t\t{port53} {_IP[fam]} daddr {{ {', '.join(mine)} }} {accept}")
        self.emit(f"\t\t{port53} goto deny_{Reason.DNS.value}")

    def class_chain(self, cls: PolicyClass) -> None:
        rules = ",".join(map(str, cls.rules)) or "none"
        if len(rules) > 60:  # nft comments hold 128 characters
            rules = rules[:rules.rindex(",", 0, 60)] + f",... ({len(cls.rules)} rules)"
        self.emit(f"\tchain {cls.chain} {{")
        accepted = f"goto {ACCEPTED}"
        self.dns_rules(cls.dns, accepted)
        for fam in (4, 6):
            for lk in cls.lookups:
                if lk.port_set[fam]:
                    self.emit(f"\t\t{_IP[fam]} daddr . meta l4proto . th dport @{lk.port_set[fam]} {accepted}")
            for lk in cls.lookups:
                if lk.icmp_set[fam]:
                    self.emit(f"\t\tmeta l4proto {_ICMP[fam]} {_IP[fam]} daddr @{lk.icmp_set[fam]} {accepted}")
        self.emit(f'\t\tgoto deny_{Reason.DEFAULT.value} comment "acls {rules}; {len(cls.clients)} clients"', "\t}")

    def gate_chain(self, name: str, reason: Reason) -> None:
        # No mark: what these few flows may do is judged again at every packet.
        self.emit(f"\tchain {name} {{")
        self.dns_rules(None, "accept")
        self.emit(f"\t\tgoto deny_{reason.value}", "\t}")

    def deny_chain(self, reason: Reason) -> None:
        self.emit(f"\tchain deny_{reason.value} {{")
        # Counted per client and reason: by source address, except toward clients (by the client).
        field_ = "daddr" if reason is Reason.INBOUND else "saddr"
        for fam in (4, 6):
            self.emit(f"\t\tupdate @{reason.counter}{fam} {{ {_IP[fam]} {field_} }}")
        for fam in (4, 6):
            self.emit(f"\t\tupdate @logrl{fam} {{ {_IP[fam]} saddr limit rate {LOG_PER_SOURCE} }} "
                      f'limit rate {LOG_TOTAL} log prefix "{reason.value}" group {self.c.log_group} '
                      f"snaplen {LOG_SNAPLEN}")
        self.emit("\t\tdrop", "\t}")
