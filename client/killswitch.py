"""The kill switch: nothing leaves this machine except through the tunnel.

One nftables table of ours, `inet tunnel_ks_IFACE` (one per interface, so
two instances coexist), with `output` and `forward` chains whose policy is
drop.  Allowed out:
- anything through IFACE itself, and the loopback;
- packets carrying our fwmark: the data plane's UDP socket sets SO_MARK to
  it (as wg-quick's does), and only CAP_NET_ADMIN can set a mark;
- optionally the endpoints by address and UDP port (for a data plane that
  cannot mark its socket);
- DHCPv4 (udp 68 -> 67) and DHCPv6 (udp 546 -> 547), and IPv6 neighbour /
  router discovery on link-local/multicast addresses with hop limit 255, so
  the uplink keeps its lease and its neighbours;
- in `forward`: packets from the tunnel that belong to a connection already
  accepted (replies to what we forwarded into it).

Rules kept here:
- interfaces are matched by *name* (`oifname`), not index: when the tunnel
  link disappears (data plane crash, re-creation) the switch still blocks,
  and it applies again as soon as a link of that name is back;
- the table does not depend on tunnel state: it stays in place across
  re-handshakes and key rotation, and only `undo` (kind "nft_table")
  removes it; after a crash it stays until `tunnel down` runs the journal;
- our chains drop; a drop in any base chain is final in nftables, so no
  other table's accept can open a hole (and our accepts do not override
  another table's drops).

On by default for full-tunnel configs?  Yes, and off for split tunnels.
A full-tunnel config (AllowedIPs with a /0) states "all my traffic goes
through the server"; the policy-routing rules alone only keep that promise
while the tunnel link exists: if the data plane dies, the link and its
table-T route vanish and traffic silently falls back to the main table's
default route, in clear, exactly when the user is not looking.  The kill
switch makes that failure closed.  Its costs: the LAN (printers, casting)
is unreachable while the tunnel is up, and a crashed client leaves the
machine offline until `tunnel down` (or the next `tunnel up`) runs the
journal, which is the safe direction and says so in its error message.
Users who want LAN access set `KillSwitch = off`.  A split tunnel routes
only some prefixes and by design lets the rest out, so a switch there would
break the config's meaning.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from tunnel import nft
from tunnel.resolve import scope_name
from tunnel.undo import Journal

DROP_COMMENT = "tunnel kill switch drop"

# Outgoing ND/RD: router solicitation, neighbour solicitation/advertisement.
_ND_TYPES = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"


def table_name(ifname: str) -> str:
    return nft.table_name("ks", ifname)


def _endpoint_rule(endpoint: tuple) -> str:
    """Let UDP to ENDPOINT out: a socket address, (host, port) or (host, port, flowinfo, scope).

    A v4-mapped address is the IPv4 peer it names (our data plane reaches it
    from its IPv4 socket); a scoped link-local one goes out of its scope's
    interface only, matched by name as everything here.
    """
    host, port = endpoint[0], endpoint[1]
    scope = endpoint[3] if len(endpoint) > 3 else 0
    host, _, zone = host.partition("%")
    addr = ipaddress.ip_address(host)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr, scope, zone = addr.ipv4_mapped, 0, ""
    if not 0 < int(port) < 65536:
        raise ValueError(f"bad endpoint port {port!r}")
    proto = "ip" if addr.version == 4 else "ip6"
    rule = f"{proto} daddr {addr} udp dport {int(port)} accept"
    if addr.version == 6 and (zone or scope):
        name = zone if zone and not zone.isdigit() else scope_name(int(zone) if zone else scope)
        nft.check_ifname(name)
        rule = f'oifname "{name}" {rule}'
    return rule


def ruleset(ifname: str, fwmark: int | None, endpoints: Iterable[tuple] = ()) -> str:
    """The body of the kill switch table (exposed for tests and `tunnel status`)."""
    nft.check_ifname(ifname)
    if fwmark is None and not endpoints:
        raise ValueError("the kill switch needs a fwmark or endpoints to let the tunnel out")
    allow = ['oifname "lo" accept', f'oifname "{ifname}" accept']
    if fwmark is not None:
        allow.append(f"meta mark {int(fwmark)} accept")
    allow += [_endpoint_rule(e) for e in endpoints]
    allow += [
        "udp sport 68 udp dport 67 accept",
        "meta nfproto ipv6 udp sport 546 udp dport 547 accept",
        f"ip6 daddr {{ fe80::/10, ff02::/16 }} icmpv6 type {{ {_ND_TYPES} }} "
        "ip6 hoplimit 255 accept",
        # MLD reports keep multicast (hence ND) working behind snooping switches.
        "ip6 saddr fe80::/10 ip6 daddr ff02::16 icmpv6 type mld2-listener-report accept",
    ]
    out = "\n    ".join(allow)
    return (
        "chain output {\n"
        "    type filter hook output priority filter; policy drop;\n"
        f"    {out}\n"
        f'    counter drop comment "{DROP_COMMENT}"\n'
        "}\n"
        "chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        f'    oifname "{ifname}" accept\n'
        f'    iifname "{ifname}" ct state established,related accept\n'
        f'    counter drop comment "{DROP_COMMENT}"\n'
        "}"
    )


def apply_killswitch(journal: Journal, ifname: str, fwmark: int | None,
                     endpoints: Iterable[tuple] = ()) -> None:
    """Install (or atomically replace) the kill switch for IFNAME; recorded first."""
    body = ruleset(ifname, fwmark, list(endpoints))
    name = table_name(ifname)
    nft.require()  # before the journal names a table that could never be made, or undone
    journal.record("nft_table", family="inet", name=name)
    nft.replace_table("inet", name, body)


def dropped_packets(ifname: str) -> int:
    """Packets the output chain has dropped so far (for `tunnel status` and tests)."""
    return nft.counter_packets("inet", table_name(ifname), "output", DROP_COMMENT)
