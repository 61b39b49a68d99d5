"""Full-tunnel policy routing, wg-quick style (see `man 8 wg-quick`).

For each address family the tunnel carries a /0 for, with T = the fwmark
(51820 unless configured):

    table T:       default dev IFACE
    rule P:        not fwmark T lookup T              (P = 32765 normally)
    rule P-1:      lookup main suppress_prefixlength 0

Our own UDP socket carries fwmark T (SO_MARK), so its packets skip table T
and follow the main table to the real uplink; everything else misses the
main table's default (suppressed) and takes table T into the tunnel, while
more specific main routes (the LAN, link-local) keep working.

Rules kept here:
- every change is recorded in the Journal *before* it is made;
- rules go in before the default route of table T, and that route goes in
  last: while table T is empty the rules fall through to main, so until the
  moment the tunnel route appears traffic takes exactly the path it took
  before (no window where it goes nowhere or half-way);
- a family the tunnel does not carry is *blocked*, not left alone: table T
  gets `unreachable default` for it, so e.g. IPv6 cannot leak around an
  IPv4-only tunnel (LAN and link-local still work through main);
- rule priorities are chosen explicitly (below the lowest existing non-zero
  priority, as the kernel would) and recorded, so the undo deletes exactly
  our rules; the generic steps (routes, rules, sysctls) are tunnel's
  (tunnel/netconfig.py, tunnel/sysctl.py) with their undo kinds
  "routing.rule", "routing.route", "routing.sysctl", plus "nft_table";
  every undo is idempotent;
- an nft table `tunnel_rt_IFACE` carries wg-quick's companions to the rules:
  the conntrack mark that lets replies to our marked socket pass reverse-path
  filtering (with net.ipv4.conf.all.src_valid_mark=1), and a drop of packets
  addressed to the tunnel's addresses arriving on other interfaces.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from pyroute2 import IPRoute

from tunnel import netconfig, nft
from tunnel.netconfig import DEFAULT_FWMARK, RT_TABLE_MAIN, add_route, add_rule, rule_priority
from tunnel.sysctl import set_sysctl
from tunnel.undo import Journal

_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}


class RoutingError(RuntimeError):
    """The routing state does not allow what was asked (our side's problem)."""


# ---------------------------------------------------------------- nftables companions


def _rt_table_body(ifname: str, fwmark: int, addresses: Iterable[str]) -> str:
    lines = [
        # Replies to our marked UDP socket get the mark back from conntrack,
        # so reverse-path filtering (src_valid_mark) sees the uplink route.
        "chain premangle {",
        "  type filter hook prerouting priority mangle; policy accept;",
        f"  meta l4proto udp ct mark {fwmark} meta mark set ct mark",
        "}",
        "chain postmangle {",
        "  type filter hook postrouting priority mangle; policy accept;",
        f"  meta l4proto udp meta mark {fwmark} ct mark set meta mark",
        "}",
        # Nobody on the LAN may reach our tunnel addresses by sending to them
        # directly (wg-quick's preraw chain).
        "chain preraw {",
        "  type filter hook prerouting priority raw; policy accept;",
    ]
    for text in addresses:
        addr = ipaddress.ip_interface(text).ip
        proto = "ip" if addr.version == 4 else "ip6"
        lines.append(f'  iifname != "{ifname}" {proto} daddr {addr} fib saddr type != local drop')
    lines.append("}")
    return "\n".join(lines)


def apply_mss_clamp(journal: Journal, ifname: str) -> None:
    """Clamp the MSS of forwarded TCP SYNs entering the tunnel to its route MTU.

    Locally made connections already use the route MTU; this is for traffic
    we forward (containers, a shared connection, the server's NAT).
    """
    name = nft.table_name("mss", ifname)
    journal.record("nft_table", family="inet", name=name)
    nft.replace_table("inet", name, "\n".join([
        "chain forward {",
        "  type filter hook forward priority mangle; policy accept;",
        f'  oifname "{ifname}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu',
        "}",
    ]))


# ---------------------------------------------------------------- full tunnel


def apply_full_tunnel(journal: Journal, ifname: str, fwmark: int = DEFAULT_FWMARK,
                      families: set[int] = frozenset({4, 6}), block_others: bool = True,
                      addresses: Iterable[str] = ()) -> None:
    """Route every packet of FAMILIES through IFNAME, wg-quick style.

    Call with the link up and its addresses set.  The data plane's UDP socket
    must carry SO_MARK = FWMARK.  With BLOCK_OTHERS, the families the tunnel
    does not carry get an unreachable default instead (no leak around it).
    ADDRESSES (the tunnel's own, "10.0.0.2/32") feed the anti-spoofing drop.
    """
    nft.check_ifname(ifname)
    if not 0 < fwmark < 2**32:
        raise ValueError(f"bad fwmark {fwmark}")
    carried = {f for f in families if f in (4, 6)}
    if carried != set(families) or not carried:
        raise ValueError(f"families must be a non-empty subset of {{4, 6}}: {families!r}")
    blocked = ({4, 6} - carried) if block_others else set()
    table = fwmark

    with IPRoute() as ipr:
        for family in sorted(carried | blocked):
            if netconfig.table_has_routes(ipr, family, table):
                raise RoutingError(f"table {table} already holds IPv{family} routes; "
                                   "pick another fwmark (see tunnel.netconfig.free_table)")

        if 4 in carried:
            set_sysctl(journal, "net.ipv4.conf.all.src_valid_mark", "1")

        name = nft.table_name("rt", ifname)
        journal.record("nft_table", family="inet", name=name)
        nft.replace_table("inet", name, _rt_table_body(ifname, fwmark, addresses))

        # Rules first: with table T still empty they change nothing.
        for family in sorted(carried | blocked):
            prio = rule_priority(ipr, family)
            add_rule(journal, ipr, family, prio, table, fwmark=fwmark, invert=True)
            add_rule(journal, ipr, family, prio - 1, RT_TABLE_MAIN, suppress_prefixlen=0)

        # The default routes last: this is the instant traffic switches over.
        for family in sorted(blocked):
            add_route(journal, ipr, _DEFAULT[family], table=table, type="unreachable")
        for family in sorted(carried):
            add_route(journal, ipr, _DEFAULT[family], table=table, ifname=ifname)
