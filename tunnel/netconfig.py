"""The one place that changes routing state through netlink: our interface's
addresses, MTU, link state and AllowedIPs routes, and the generic helpers every
role uses (routes in any table, policy rules). Sysctls: tunnel/sysctl.py.

Rules kept here:
- every change is written to the Journal (tunnel/undo.py) *before* it is made;
  each kind of change has an `@undoer` that is idempotent ("delete if
  present", "restore if the link still exists"), so a journal left by a crash
  half-way through can always be replayed;
- an undo only ever touches what we made: routes on our interface are
  deleted by (destination, table, metric, *our* output interface), never by
  destination alone, so a host route to the same network is left alone;
  rules are deleted by their recorded priority;
- we work in the current network namespace and never run `ip`: pyroute2 only,
  one IPRoute socket per call (or the caller's, passed in), closed on return;
- the TUN device is created elsewhere (tunnel/tun.py); its undo is the kind
  "link" registered here: delete the link if it exists;
- AllowedIPs routes follow wg-quick: one `NET dev IF` per network unless a
  route on this interface in the main table already covers it; /0 networks
  belong to policy routing, a role's business (see `split_default_routes`),
  and are accepted only with an explicit table.

Undo kinds: link, address, route, link_mtu, link_down (our interface);
routing.route, routing.rule (generic; the names are older than this module
and stay, so old journals still undo).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from typing import Iterable, Iterator, NamedTuple, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.undo import Journal, undoer

IFA_F_NODAD = 0x02  # linux/if_addr.h: a tunnel address has no neighbours to collide with
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTAX_MTU = "RTAX_MTU"
FIB_RULE_INVERT = 0x2  # linux/fib_rules.h: `not fwmark ...`
# wg-quick's fwmark and policy table for full-tunnel configs (`man 8 wg-quick`).
DEFAULT_FWMARK = 51820
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetconfigError(Exception):
    """The kernel refused a configuration, or the interface/route is not there."""


class RouteToEndpoint(NamedTuple):
    """Where the kernel would send a packet: for deriving the tunnel MTU from the path."""

    ifname: str
    gateway: str | None
    src: str | None
    mtu: int  # the route's MTU metric if it has one, else the output link's MTU


@contextlib.contextmanager
def _iproute() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _require_index(ipr: IPRoute, ifname: str) -> int:
    idx = _index(ipr, ifname)
    if idx is None:
        raise NetconfigError(f"no interface named {ifname!r}")
    return idx


def _family(net: IPNetwork | ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> int:
    return 2 if net.version == 4 else 10  # AF_INET, AF_INET6


def _network(text: str) -> IPNetwork:
    # AllowedIPs may carry host bits ("10.0.0.1/24"); `wg` masks them, so do we.
    return ipaddress.ip_network(text.strip(), strict=False)


def is_full_tunnel(allowed_ips: Iterable[str]) -> tuple[bool, bool]:
    """(v4, v6): whether AllowedIPs contains 0.0.0.0/0 and ::/0 respectively.

    Like wg-quick, only an exact /0 switches to policy routing; 0.0.0.0/1 +
    128.0.0.0/1 style configs are ordinary routes.
    """
    v4 = v6 = False
    for text in allowed_ips:
        net = _network(text)
        if net.prefixlen == 0:
            v4 |= net.version == 4
            v6 |= net.version == 6
    return v4, v6


def split_default_routes(networks: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split AllowedIPs into (/0 networks, the others), normalised ("10.0.0.1/24" -> "10.0.0.0/24")."""
    defaults: list[str] = []
    others: list[str] = []
    for text in networks:
        net = _network(text)
        (defaults if net.prefixlen == 0 else others).append(str(net))
    return defaults, others


# -- reading -------------------------------------------------------------------


def link_exists(ifname: str) -> bool:
    with _iproute() as ipr:
        return _index(ipr, ifname) is not None


def link_mtu(ifname: str) -> int:
    with _iproute() as ipr:
        link = ipr.get_links(_require_index(ipr, ifname))[0]
        return int(link.get_attr("IFLA_MTU"))


def route_get(dst: str) -> RouteToEndpoint:
    """The route the kernel would use to reach `dst` (an address, v4 or v6)."""
    address = ipaddress.ip_address(dst)
    with _iproute() as ipr:
        try:
            route = ipr.route("get", dst=str(address))[0]
        except NetlinkError as exc:
            raise NetconfigError(f"no route to {address}: {exc}") from exc
        oif = route.get_attr("RTA_OIF")
        link = ipr.get_links(oif)[0]
        mtu = int(link.get_attr("IFLA_MTU"))
        metrics = route.get_attr("RTA_METRICS")
        if metrics is not None and metrics.get_attr(RTAX_MTU):
            mtu = int(metrics.get_attr(RTAX_MTU))
        return RouteToEndpoint(
            ifname=link.get_attr("IFLA_IFNAME"),
            gateway=route.get_attr("RTA_GATEWAY"),
            src=route.get_attr("RTA_PREFSRC"),
            mtu=mtu,
        )


def free_table(start: int = DEFAULT_FWMARK) -> int:
    """First table number >= START with no IPv4 or IPv6 route (wg-quick's search)."""
    table = start
    with _iproute() as ipr:
        while any(ipr.route("dump", family=_AF[f], table=table) for f in (4, 6)):
            table += 1
    return table


def rule_priority(ipr: IPRoute, family: int) -> int:
    """What the kernel gives a rule added without priority: just above the first after 0."""
    prios = [r.get("FRA_PRIORITY") or 0 for r in ipr.get_rules(family=_AF[family])]
    prios = [p for p in prios if p > 0]
    return (min(prios) if prios else 32766) - 1


def table_has_routes(ipr: IPRoute, family: int, table: int) -> bool:
    return bool(ipr.route("dump", family=_AF[family], table=table))


# -- changing our interface ----------------------------------------------------------


def set_up(journal: Journal, ifname: str, addresses: Sequence[str], mtu: int) -> None:
    """Give our interface its addresses (with prefix; IPv6 without DAD) and MTU, and bring it up."""
    interfaces = [ipaddress.ip_interface(a.strip()) for a in addresses]
    with _iproute() as ipr:
        idx = _require_index(ipr, ifname)
        link = ipr.get_links(idx)[0]
        old_mtu = int(link.get_attr("IFLA_MTU"))
        was_up = bool(link["flags"] & IFF_UP)

        for iface in interfaces:
            journal.record("address", ifname=ifname, address=str(iface))
            try:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                         flags=IFA_F_NODAD if iface.version == 6 else 0)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # already on our link: the state we want
                    raise NetconfigError(f"add address {iface} to {ifname}: {exc}") from exc

        if old_mtu != mtu:
            journal.record("link_mtu", ifname=ifname, mtu=old_mtu)
            try:
                ipr.link("set", index=idx, mtu=mtu)
            except NetlinkError as exc:
                raise NetconfigError(f"set MTU {mtu} on {ifname}: {exc}") from exc

        if not was_up:
            journal.record("link_down", ifname=ifname)
            ipr.link("set", index=idx, state="up")


def _covered(ipr: IPRoute, idx: int, net: IPNetwork) -> bool:
    """True if a main-table route on our link already contains `net` (wg-quick's `route show dev IF match NET`)."""
    for route in ipr.get_routes(family=_family(net), table=RT_TABLE_MAIN):
        if route.get_attr("RTA_OIF") != idx or route.get_attr("RTA_TABLE", RT_TABLE_MAIN) != RT_TABLE_MAIN:
            continue
        dst = route.get_attr("RTA_DST") or ("0.0.0.0" if net.version == 4 else "::")
        have = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
        if have.prefixlen <= net.prefixlen and net.subnet_of(have):  # type: ignore[arg-type]
            return True
    return False


def add_routes(journal: Journal, ifname: str, networks: Sequence[str], table: int | None = None,
               metric: int | None = None) -> list[str]:
    """Route each AllowedIPs network to our interface; return the networks actually added.

    Without `table`, routes go to the main table and a network already covered
    by a route on this interface is skipped; /0 networks are refused there
    (they belong to policy routing: route them with an explicit table).
    """
    nets = [_network(n) for n in networks]
    if table is None and any(n.prefixlen == 0 for n in nets):
        raise ValueError("default routes need an explicit table; split them off with split_default_routes")
    added: list[str] = []
    with _iproute() as ipr:
        idx = _require_index(ipr, ifname)
        for net in nets:
            if table is None and _covered(ipr, idx, net):
                continue
            journal.record("route", ifname=ifname, network=str(net), table=table, metric=metric)
            spec = _route_spec(idx, net, table, metric)
            try:
                ipr.route("add", **spec)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST and _route_is_ours(ipr, spec):
                    continue
                raise NetconfigError(f"add route {net} dev {ifname}"
                                     f"{f' table {table}' if table else ''}: {exc}") from exc
            added.append(str(net))
    return added


def _route_spec(idx: int, net: IPNetwork, table: int | None, metric: int | None) -> dict[str, object]:
    spec: dict[str, object] = {"dst": str(net), "oif": idx, "family": _family(net),
                               "table": table if table is not None else RT_TABLE_MAIN}
    if metric is not None:
        spec["priority"] = metric
    return spec


def _route_is_ours(ipr: IPRoute, spec: dict[str, object]) -> bool:
    net = _network(str(spec["dst"]))
    for route in ipr.get_routes(family=_family(net), table=spec["table"]):
        if (route.get_attr("RTA_DST") == str(net.network_address) and route["dst_len"] == net.prefixlen
                and route.get_attr("RTA_OIF") == spec["oif"]):
            return True
    return False


def delete_link(ifname: str) -> bool:
    """Delete the interface if it exists (its addresses and routes go with it); True if it did."""
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:  # gone between lookup and delete
                return False
            raise
        return True


# -- generic: routes in any table, policy rules ---------------------------------


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
    """Add a policy rule at an explicit PRIORITY (so that its undo deletes exactly it), recorded first."""
    spec = dict(family=family, priority=priority, table=table, fwmark=fwmark,
                invert=invert, suppress_prefixlen=suppress_prefixlen)
    journal.record("routing.rule", **spec)
    ipr.rule("add", **_rule_kwargs(**spec))


def _generic_route_kwargs(ipr: IPRoute, family: int, table: int, dst: str, type: str,
                          ifname: str | None, gateway: str | None) -> dict | None:
    net = ipaddress.ip_network(dst)
    kw = {"family": _AF[family], "table": table, "dst": str(net.network_address),
          "dst_len": net.prefixlen, "type": type}
    if ifname is not None:
        index = _index(ipr, ifname)
        if index is None:
            return None  # the link is gone, and its routes with it
        kw["oif"] = index
    if gateway is not None:
        kw["gateway"] = gateway
    return kw


def add_route(journal: Journal, ipr: IPRoute, dst: str, table: int = RT_TABLE_MAIN,
              ifname: str | None = None, gateway: str | None = None,
              type: str = "unicast") -> None:
    """Add route DST (dev IFNAME / via GATEWAY / unreachable) to TABLE, recorded first."""
    family = ipaddress.ip_network(dst).version
    spec = dict(family=family, table=table, dst=str(ipaddress.ip_network(dst)), type=type,
                ifname=ifname, gateway=gateway)
    journal.record("routing.route", **spec)
    kw = _generic_route_kwargs(ipr, **spec)
    if kw is None:
        raise NetconfigError(f"no interface {ifname!r} to route {dst} through")
    ipr.route("add", **kw)


# -- undo kinds ------------------------------------------------------------------
# Each runs in a fresh process as easily as in ours, and twice as easily as once.


@undoer("link")
def _undo_link(ifname: str) -> None:
    delete_link(ifname)


@undoer("address")
def _undo_address(ifname: str, address: str) -> None:
    iface = ipaddress.ip_interface(address)
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return
        try:
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                raise


@undoer("route")
def _undo_route(ifname: str, network: str, table: int | None = None, metric: int | None = None) -> None:
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:  # the routes died with the link
            return
        try:
            ipr.route("del", **_route_spec(idx, _network(network), table, metric))
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise


@undoer("link_mtu")
def _undo_link_mtu(ifname: str, mtu: int) -> None:
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
        if idx is not None:
            ipr.link("set", index=idx, mtu=mtu)


@undoer("link_down")
def _undo_link_up(ifname: str) -> None:
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
        if idx is not None:
            ipr.link("set", index=idx, state="down")


@undoer("routing.rule")
def _delete_rule(**spec) -> None:
    with _iproute() as ipr:
        try:
            ipr.rule("del", **_rule_kwargs(**spec))
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise


@undoer("routing.route")
def _delete_route(**spec) -> None:
    with _iproute() as ipr:
        kw = _generic_route_kwargs(ipr, **spec)
        if kw is None:
            return
        try:
            ipr.route("del", **kw)
        except NetlinkError as exc:
            if exc.code not in _GONE:
                raise
