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
  our rules; undo kinds: "routing.rule", "routing.route", "routing.sysctl",
  "nft_table"; every undo is idempotent;
- an nft table `tunnel_rt_IFACE` carries wg-quick's companions to the rules:
  the conntrack mark that lets replies to our marked socket pass reverse-path
  filtering (with net.ipv4.conf.all.src_valid_mark=1), and a drop of packets
  addressed to the tunnel's addresses arriving on other interfaces.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel import nft
from tunnel.undo import Journal, undoer

DEFAULT_FWMARK = 51820
MAIN_TABLE = 254
FIB_RULE_INVERT = 0x2
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}


_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)


class RoutingError(RuntimeError):
    """The routing state does not allow what was asked (our side's problem)."""


# ---------------------------------------------------------------- queries


def is_full_tunnel(allowed_ips: Iterable[str]) -> tuple[bool, bool]:
    """(v4, v6): whether AllowedIPs contains 0.0.0.0/0 and ::/0 respectively.

    Like wg-quick, only an exact /0 switches to policy routing; 0.0.0.0/1 +
    128.0.0.0/1 style configs are ordinary routes.
    """
    v4 = v6 = False
    for text in allowed_ips:
        net = ipaddress.ip_network(text.strip(), strict=False)
        if net.prefixlen == 0:
            v4 |= net.version == 4
            v6 |= net.version == 6
    return v4, v6


def free_table(start: int = DEFAULT_FWMARK) -> int:
    """First table number >= START with no IPv4 or IPv6 route (wg-quick's search)."""
    table = start
    with IPRoute() as ipr:
        while any(ipr.route("dump", family=_AF[f], table=table) for f in (4, 6)):
            table += 1
    return table


# ---------------------------------------------------------------- sysctls


def _sysctl_path(name: str) -> str:
    if not name.startswith("net.") or "/" in name or ".." in name:
        raise ValueError(f"refusing sysctl {name!r}")
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name: str) -> str:
    with open(_sysctl_path(name), encoding="ascii") as f:
        return f.read().strip()


def set_sysctl(journal: Journal, name: str, value: str) -> None:
    """Set sysctl NAME (of this network namespace) to VALUE, recording the old value.

    Nothing is recorded when it already holds VALUE: we changed nothing, so
    stopping must not "restore" it from under whoever set it.
    """
    old = read_sysctl(name)
    if old == value:
        return
    journal.record("routing.sysctl", name=name, old=old, new=value)
    with open(_sysctl_path(name), "w", encoding="ascii") as f:
        f.write(value)


@undoer("routing.sysctl")
def _restore_sysctl(name: str, old: str, new: str) -> None:
    # Restore only while it still holds what we wrote: if someone changed it
    # since, theirs is the newer intent.
    if read_sysctl(name) == new:
        with open(_sysctl_path(name), "w", encoding="ascii") as f:
            f.write(old)


# ---------------------------------------------------------------- rules and routes


def _rule_kwargs(family: int, priority: int, table: int, fwmark: int | None,
                 invert: bool, suppress_prefixlen: int | None) -> dict:
    kw = {"family": _AF[family], "priority": priority, "table": table}
    if fwmark is not None:
        kw["fwmark"] = fwmark
    if invert:
        kw["flags"] = FIB_RULE_INVERT
    if suppress_prefixlen is not None:
        kw["suppress_prefixlen"] = suppress_prefixlen
    return kw


def add_rule(journal: Journal, ipr: IPRoute, family: int, priority: int, table: int,
             fwmark: int | None = None, invert: bool = False,
             suppress_prefixlen: int | None = None) -> None:
    spec = dict(family=family, priority=priority, table=table, fwmark=fwmark,
                invert=invert, suppress_prefixlen=suppress_prefixlen)
    journal.record("routing.rule", **spec)
    ipr.rule("add", **_rule_kwargs(**spec))


@undoer("routing.rule")
def _delete_rule(**spec) -> None:
    with IPRoute() as ipr:
        try:
            ipr.rule("del", **_rule_kwargs(**spec))
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise


def _route_kwargs(ipr: IPRoute, family: int, table: int, dst: str, type: str,
                  ifname: str | None, gateway: str | None) -> dict | None:
    net = ipaddress.ip_network(dst)
    kw = {"family": _AF[family], "table": table, "dst": str(net.network_address),
          "dst_len": net.prefixlen, "type": type}
    if ifname is not None:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return None  # the link is gone, and its routes with it
        kw["oif"] = index[0]
    if gateway is not None:
        kw["gateway"] = gateway
    return kw


def add_route(journal: Journal, ipr: IPRoute, dst: str, table: int = MAIN_TABLE,
              ifname: str | None = None, gateway: str | None = None,
              type: str = "unicast") -> None:
    """Add route DST (dev IFNAME / via GATEWAY / unreachable) to TABLE, recorded first."""
    family = ipaddress.ip_network(dst).version
    spec = dict(family=family, table=table, dst=str(ipaddress.ip_network(dst)), type=type,
                ifname=ifname, gateway=gateway)
    journal.record("routing.route", **spec)
    kw = _route_kwargs(ipr, **spec)
    if kw is None:
        raise RoutingError(f"no interface {ifname!r} to route {dst} through")
    ipr.route("add", **kw)


@undoer("routing.route")
def _delete_route(**spec) -> None:
    with IPRoute() as ipr:
        kw = _route_kwargs(ipr, **spec)
        if kw is None:
            return
        try:
            ipr.route("del", **kw)
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise


def _rule_priority(ipr: IPRoute, family: int) -> int:
    """What the kernel gives a rule added without priority: just above the first after 0."""
    prios = [r.get("FRA_PRIORITY") or 0 for r in ipr.get_rules(family=_AF[family])]
    prios = [p for p in prios if p > 0]
    return (min(prios) if prios else 32766) - 1


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
            if ipr.route("dump", family=_AF[family], table=table):
                raise RoutingError(f"table {table} already holds IPv{family} routes; "
                                   "pick another fwmark (see free_table)")

        if 4 in carried:
            set_sysctl(journal, "net.ipv4.conf.all.src_valid_mark", "1")

        name = nft.table_name("rt", ifname)
        journal.record("nft_table", family="inet", name=name)
        nft.replace_table("inet", name, _rt_table_body(ifname, fwmark, addresses))

        # Rules first: with table T still empty they change nothing.
        for family in sorted(carried | blocked):
            prio = _rule_priority(ipr, family)
            add_rule(journal, ipr, family, prio, table, fwmark=fwmark, invert=True)
            add_rule(journal, ipr, family, prio - 1, MAIN_TABLE, suppress_prefixlen=0)

        # The default routes last: this is the instant traffic switches over.
        for family in sorted(blocked):
            add_route(journal, ipr, _DEFAULT[family], table=table, type="unreachable")
        for family in sorted(carried):
            add_route(journal, ipr, _DEFAULT[family], table=table, ifname=ifname)
