"""The policy evaluated in Python: `decide`, the file's `tests`, and `explain`. Never per packet.

Rules kept here:
- `decide` takes the same steps in the same order as the compiled kernel
  chains (compile.py), so `explain` says what the packets will meet:
    0. multicast and broadcast destinations: dropped (not counted);
    1. a local service on a gateway address: accepted;
    2. a source that is no client's, or a client not logged in: only the
       gateway's DNS; otherwise denied (unknown / login);
    3. port 53 (tcp/udp): clients whose groups have `dns` servers reach
       those only; the others reach the gateway's DNS servers, and other
       servers if a rule accepts them;
    4. the first rule (in file order) whose src includes the client, whose
       proto includes the protocol, and one of whose dst covers the address
       and port (ICMP: the address only, as Tailscale: a rule that opens a
       port on a host lets its clients ping that host);
    5. default deny;
- the verdict is about the first packet of a connection: replies to an
  accepted connection pass (stateful), and new connections toward a
  client from outside the tunnel are always denied (no rule has such a
  source);
- a test `accept` passes when every client of its src reaches every
  address of the dst by TCP or UDP (by the test's proto if it has one);
  `deny` passes when none reaches any address by either.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable

from . import targets
from .clients import ClientRef, Resolver
from .context import GatewayContext
from .errors import PolicyError
from .model import Policy, PolicyTest, Rule, TestDestination
from .reasons import Reason
from .settings import dns_for
from .targets import IPAddress

DNS_PORT = 53
# Multicast, and for IPv4 the reserved block with the limited broadcast: never a client's destination.
MULTICAST = {4: ipaddress.ip_network("224.0.0.0/3"), 6: ipaddress.ip_network("ff00::/8")}
_NO_GATEWAY = GatewayContext()


@dataclass(frozen=True)
class Decision:
    reason: Reason
    rule: Rule | None = None

    @property
    def accept(self) -> bool:
        return self.reason.accepts

    @property
    def verdict(self) -> str:
        return "accept" if self.accept else "deny"

    def describe(self) -> str:
        if self.rule is not None:
            return f"accept by {self.rule.describe()}"
        return f"{self.verdict}: {self.reason.explain()}"


def _resolver(policy: Policy, clients: Iterable[ClientRef] | Resolver) -> Resolver:
    return clients if isinstance(clients, Resolver) else Resolver(policy, clients)


def decide(policy: Policy, clients: Iterable[ClientRef] | Resolver, src_client: str | ClientRef | None,
           dst_addr: str | IPAddress, port: int | None, proto: str,
           gateway: GatewayContext | None = None) -> Decision:
    """The verdict on a new connection from SRC_CLIENT (a name; None: an unknown address) to DST_ADDR."""
    resolver = _resolver(policy, clients)
    gw = gateway or _NO_GATEWAY
    addr = ipaddress.ip_address(dst_addr) if isinstance(dst_addr, str) else dst_addr
    if proto not in targets.PROTOCOLS:
        raise ValueError(f"protocol {proto!r}: expected tcp, udp or icmp")
    if proto == "icmp":
        port = None
    elif port is None or not 0 <= port <= targets.PORT_MAX:
        raise ValueError(f"{proto} needs a port from 0 to {targets.PORT_MAX}")
    dns = proto in ("tcp", "udp") and port == DNS_PORT

    if addr in MULTICAST[addr.version]:
        return Decision(Reason.MULTICAST)
    if gw.is_local_service(addr, proto, port):
        return Decision(Reason.LOCAL_SERVICE)
    client = src_client if isinstance(src_client, ClientRef) else (
        resolver.client(src_client) if src_client is not None else None)
    if client is None or not client.admitted:
        if dns and addr in gw.dns_servers:
            return Decision(Reason.GATEWAY_DNS)
        return Decision(Reason.UNKNOWN if client is None else Reason.LOGIN)
    if dns:
        own = dns_for(policy, resolver, client)
        if own is not None:
            return Decision(Reason.GROUP_DNS if addr in own else Reason.DNS)
        if addr in gw.dns_servers:
            return Decision(Reason.GATEWAY_DNS)
    for rule in policy.rules:
        if proto not in rule.protos or not any(resolver.src_matches(s, client) for s in rule.src):
            continue
        for d in rule.dst:
            if not any(addr in net for net in resolver.networks(d.target)):
                continue
            if port is None or any(lo <= port <= hi for lo, hi in d.ports):
                return Decision(Reason.RULE, rule)
    return Decision(Reason.DEFAULT)


# -- the file's tests ------------------------------------------------------------


def run_tests(policy: Policy, clients: Iterable[ClientRef] | Resolver,
              gateway: GatewayContext | None = None) -> list[str]:
    """Run the policy's `tests`; one line per failure ("FILE:LINE: ..."), empty if all pass."""
    resolver = _resolver(policy, clients)
    failures: list[str] = []
    for test in policy.tests:
        failures.extend(_run_test(policy, resolver, test, gateway))
    return failures


def _run_test(policy: Policy, resolver: Resolver, test: PolicyTest,
              gateway: GatewayContext | None) -> list[str]:
    where = policy.where(test.line)
    srcs = resolver.check_source(test.src)
    if not srcs and test.src.kind == "group":
        # A group without members yet is tested as its first member would be: a policy may be
        # written (and its tests run) before the group's clients are added or log in.
        srcs = [ClientRef(f"(a member of {test.src})", (), frozenset({test.src.name}))]
    if not srcs:
        return [f"{where}: tests[{test.index}]: src {test.src} has no clients"]
    protos = (test.proto,) if test.proto else ("tcp", "udp")
    failures = []
    for want, dsts in ((True, test.accept), (False, test.deny)):
        for dst in dsts:
            addrs = _test_addresses(resolver, dst)
            if not addrs:
                failures.append(f"{policy.where(dst.line)}: tests[{test.index}]: {dst.text}: no address to test")
                continue
            failure = _first_mismatch(policy, resolver, srcs, addrs, dst, protos, want, gateway)
            if failure:
                failures.append(f"{policy.where(dst.line)}: tests[{test.index}]: {failure}")
    return failures


def _first_mismatch(policy: Policy, resolver: Resolver, srcs: list[ClientRef], addrs: list[IPAddress],
                    dst: TestDestination, protos: tuple[str, ...], want: bool,
                    gateway: GatewayContext | None) -> str | None:
    for client in srcs:
        # Tests are about the policy: a client that is not logged in right
        # now must not make a correct policy fail its tests.
        client = replace(client, admitted=True)
        for addr in addrs:
            decisions = [decide(policy, resolver, client, addr, dst.port, p, gateway) for p in protos]
            got = any(d.accept for d in decisions)
            if got != want:
                shown = next(d for d in decisions if d.accept == got)
                return (f"{client.name} -> {dst.text} ({addr}, {'/'.join(protos)}): "
                        f"expected {'accept' if want else 'deny'}, got {shown.describe()}")
    return None


def _test_addresses(resolver: Resolver, dst: TestDestination) -> list[IPAddress]:
    return [net.network_address for net in resolver.networks(dst.target) if net.num_addresses == 1]


def check_policy(policy: Policy, clients: Iterable[ClientRef] | Resolver,
                 gateway: GatewayContext | None = None) -> list[str]:
    """Everything `policy check` reports: names that match no client, then failing tests."""
    resolver = _resolver(policy, clients)
    resolver.check_names()
    problems = list(resolver.problems)
    return problems + [f for f in run_tests(policy, resolver, gateway) if f not in problems]


# -- explain -------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    client: str
    destination: str  # as given
    address: IPAddress
    proto: str
    port: int | None
    decision: Decision

    def __str__(self) -> str:
        where = f"[{self.address}]" if self.address.version == 6 and self.port is not None else str(self.address)
        dest = f"{where}:{self.port}/{self.proto}" if self.port is not None else f"{self.address} ({self.proto})"
        named = "" if self.destination in (str(self.address), f"[{self.address}]") else f"{self.destination} = "
        return f"{self.client} -> {named}{dest}: {self.decision.describe()}"


def parse_destination(spec: str) -> tuple[str, int | None, str | None]:
    """DEST[:PORT[/PROTO]] -> (DEST, PORT or None, PROTO or None); IPv6 in brackets when a port follows."""
    proto = None
    head, slash, tail = spec.rpartition("/")
    if slash and tail in targets.PROTOCOLS:
        spec, proto = head, tail
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or (spec[end + 1:] and not spec[end + 1:].startswith(":")):
            raise ValueError(f"{spec!r}: expected [IPv6]:PORT")
        host, port_text = spec[1:end], spec[end + 2:] if spec[end + 1:] else ""
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
    else:
        host, port_text = spec, ""  # a name, an IPv4 address, or a bare IPv6 address
    if port_text == "":
        port = None
    elif port_text.isdigit() and int(port_text) <= targets.PORT_MAX:
        port = int(port_text)
    else:
        raise ValueError(f"{spec!r}: {port_text!r} is not a port (0-{targets.PORT_MAX})")
    if port is not None and proto == "icmp":
        raise ValueError(f"{spec!r}: ICMP has no ports")
    if port is None and proto in ("tcp", "udp"):
        raise ValueError(f"{spec!r}: {proto} needs a port (DEST:PORT/{proto})")
    return host, port, proto


def explain(policy: Policy, clients: Iterable[ClientRef] | Resolver, client: str, destination: str,
            gateway: GatewayContext | None = None) -> list[Explanation]:
    """The verdicts for CLIENT -> DEST[:PORT[/PROTO]]: without a port, ICMP; with a port and no proto, TCP and UDP.

    DEST is an address, a hosts name (of one address) or a client (each of
    its addresses). Raises PolicyError for a destination or client it cannot
    resolve.
    """
    resolver = _resolver(policy, clients)
    if resolver.client(client) is None:
        raise PolicyError(f"{client!r} is not a client")
    try:
        host, port, proto = parse_destination(destination)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    addrs = _explain_addresses(policy, resolver, host)
    protos = (proto,) if proto else (("tcp", "udp") if port is not None else ("icmp",))
    return [Explanation(client, host, a, p, port if p != "icmp" else None,
                        decide(policy, resolver, client, a, port, p, gateway))
            for a in addrs for p in protos]


def _explain_addresses(policy: Policy, resolver: Resolver, host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    if host in policy.hosts:
        net = policy.hosts[host].network
        if net.num_addresses != 1:
            raise PolicyError(f"{host!r} is the subnet {net}: give one address in it")
        return [net.network_address]
    c = resolver.client(host)
    if c is None:
        raise PolicyError(f"{host!r} is not an address, a hosts name or a client")
    addrs = [n.network_address for n in c.networks if n.num_addresses == 1]
    if not addrs:
        raise PolicyError(f"client {host!r} has no address")
    return addrs
