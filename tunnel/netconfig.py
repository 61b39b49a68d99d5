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
- we work in the current network namespace and never run `ip`: pyroute2,
  one IPRoute socket per call (or the caller's, passed in), closed on return;
  AllowedIPs routes alone, thousands at a time, go as batches of raw
  RTM_NEWROUTE/RTM_DELROUTE messages (many per sendmsg, one ack each), and
  their coverage is computed here from one dump of our link's routes, not
  one netlink round trip per network;
- the TUN device is created elsewhere (tunnel/tun.py); its undo is the kind
  "link" registered here: delete the link if it exists;
- AllowedIPs routes follow wg-quick: one `NET dev IF` per network unless a
  route on this interface in the main table already covers it; /0 networks
  belong to policy routing, a role's business (see `split_default_routes`),
  and are accepted only with an explicit table.

Undo kinds: link, address, routes (a batch), route (one: older journals),
link_mtu, link_down (our interface);
routing.route, routing.rule (generic; the names are older than this module
and stay, so old journals still undo).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
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


def _network(text: str | IPNetwork) -> IPNetwork:
    # AllowedIPs may carry host bits ("10.0.0.1/24"); `wg` masks them, so do we.
    if isinstance(text, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return text
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


def _main_routes_on(ipr: IPRoute, idx: int, versions: Iterable[int]) -> dict[int, dict[int, set[int]]]:
    """The main-table routes through our link: version -> prefix length -> {network >> host bits}."""
    have: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
    for version in set(versions):
        bits = _BITS[version]
        for route in ipr.get_routes(family=_AF[version], table=RT_TABLE_MAIN):
            if route.get_attr("RTA_OIF") != idx or route.get_attr("RTA_TABLE", RT_TABLE_MAIN) != RT_TABLE_MAIN:
                continue
            plen = route["dst_len"]
            dst = route.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
            have[version].setdefault(plen, set()).add(int(ipaddress.ip_address(dst)) >> (bits - plen))
    return have


def _covered(have: dict[int, dict[int, set[int]]], net: IPNetwork) -> bool:
    """True if a route in HAVE contains NET (wg-quick's `ip route show dev IF match NET`)."""
    bits = _BITS[net.version]
    value = int(net.network_address)
    for plen, keys in have[net.version].items():
        if plen <= net.prefixlen and value >> (bits - plen) in keys:
            return True
    return False


def add_routes(journal: Journal, ifname: str, networks: Sequence[str], table: int | None = None,
               metric: int | None = None) -> list[str]:
    """Route each AllowedIPs network to our interface; return the networks actually added.

    Without `table`, routes go to the main table and a network already covered
    by a route on this interface is skipped; /0 networks are refused there
    (they belong to policy routing: route them with an explicit table). One
    journal step holds the whole batch, written before any is added.
    """
    nets = [_network(n) for n in networks]
    if table is None and any(n.prefixlen == 0 for n in nets):
        raise ValueError("default routes need an explicit table; split them off with split_default_routes")
    with _iproute() as ipr:
        idx = _require_index(ipr, ifname)
        todo: list[IPNetwork] = []
        if table is None:
            have = _main_routes_on(ipr, idx, (n.version for n in nets))
            for net in nets:
                if not _covered(have, net):
                    todo.append(net)
                    have[net.version].setdefault(net.prefixlen, set()).add(
                        int(net.network_address) >> (_BITS[net.version] - net.prefixlen))
        else:
            todo = list(dict.fromkeys(nets))
        if not todo:
            return []
        added = [str(n) for n in todo]
        # One string, not a list: the journal stays in memory, and 10,000 small
        # strings would cost ~0.7 KB per peer where this costs ~15 bytes.
        journal.record("routes", ifname=ifname, networks=" ".join(added), table=table, metric=metric)
        failed = _route_batch(RTM_NEWROUTE, idx, todo, table, metric)
        if failed:
            where = f" table {table}" if table else ""
            ours = _routes_through(ipr, idx, table, {net.version for net, code in failed if code == errno.EEXIST})
            theirs = [(net, code) for net, code in failed if code != errno.EEXIST or net not in ours]
            if theirs:
                net, code = theirs[0]
                more = f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""
                raise NetconfigError(f"add route {net} dev {ifname}{where}: {errno.errorcode.get(code, code)} "
                                     f"{os.strerror(code)}{more}")
    return added


# -- routes in batches: raw rtnetlink ----------------------------------------------------
# pyroute2 costs about a millisecond per route (one round trip, its message
# objects); 10,000 AllowedIPs routes as messages packed BATCH to a sendmsg cost
# a few microseconds each. The messages are what pyroute2 sends for
# route("add", dst=..., oif=..., table=..., priority=...): proto static,
# scope universe, type unicast.

_BITS = {4: 32, 6: 128}
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 4, 0, 1
BATCH = 512  # messages per sendmsg: ~32 KB, well under the socket's send buffer
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA_U32 = struct.Struct("=HHI")
_RTA_HDR = struct.Struct("=HH")


def _route_message(command: int, seq: int, idx: int, net: IPNetwork, table: int | None, metric: int | None) -> bytes:
    table = RT_TABLE_MAIN if table is None else table
    body = _RTMSG.pack(_AF[net.version], net.prefixlen, 0, 0, table if table < 256 else 0,  # RTA_TABLE says
                       RTPROT_STATIC if command == RTM_NEWROUTE else 0,
                       RT_SCOPE_UNIVERSE if command == RTM_NEWROUTE else 0xFF,  # RT_SCOPE_NOWHERE: any, on delete
                       RTN_UNICAST, 0)
    addr = net.network_address.packed
    body += _RTA_HDR.pack(4 + len(addr), RTA_DST) + addr + _RTA_U32.pack(8, RTA_TABLE, table)
    body += _RTA_U32.pack(8, RTA_OIF, idx)
    if metric is not None:
        body += _RTA_U32.pack(8, RTA_PRIORITY, metric)
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if command == RTM_NEWROUTE else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), command, flags, seq, 0) + body


def _route_batch(command: int, idx: int, nets: Sequence[IPNetwork], table: int | None,
                 metric: int | None) -> list[tuple[IPNetwork, int]]:
    """Send one message per network, BATCH per sendmsg; the (network, errno) of those refused."""
    failed: list[tuple[IPNetwork, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # acks without a copy of each request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        for start in range(0, len(nets), BATCH):
            chunk = nets[start:start + BATCH]
            sock.send(b"".join(_route_message(command, start + i + 1, idx, net, table, metric)
                               for i, net in enumerate(chunk)))
            waiting = len(chunk)
            while waiting:
                data = sock.recv(1 << 20)
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                    if kind == NLMSG_ERROR and start < seq <= start + len(chunk):
                        (code,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                        if code:
                            failed.append((nets[seq - 1], -code))
                        waiting -= 1
                    off += max(4, (length + 3) & ~3)
    return failed


def _route_spec(idx: int, net: IPNetwork, table: int | None, metric: int | None) -> dict[str, object]:
    spec: dict[str, object] = {"dst": str(net), "oif": idx, "family": _family(net),
                               "table": table if table is not None else RT_TABLE_MAIN}
    if metric is not None:
        spec["priority"] = metric
    return spec


def _routes_through(ipr: IPRoute, idx: int, table: int | None, versions: set[int]) -> set[IPNetwork]:
    """The networks TABLE (main if None) routes through our link, of these IP versions: one dump each."""
    found: set[IPNetwork] = set()
    for version in versions:
        for route in ipr.get_routes(family=_AF[version], table=table if table is not None else RT_TABLE_MAIN):
            if route.get_attr("RTA_OIF") == idx:
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
                found.add(ipaddress.ip_network(f"{dst}/{route['dst_len']}"))
    return found


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


@undoer("routes")
def _undo_routes(ifname: str, networks: str, table: int | None = None, metric: int | None = None) -> None:
    """NETWORKS: the batch's networks, separated by spaces."""
    with _iproute() as ipr:
        idx = _index(ipr, ifname)
    if idx is None:  # the routes died with the link
        return
    failed = _route_batch(RTM_DELROUTE, idx, [_network(n) for n in networks.split()], table, metric)
    gone = (errno.ESRCH, errno.ENOENT, errno.ENODEV)
    left = [(net, code) for net, code in failed if code not in gone]
    if left:
        net, code = left[0]
        raise NetconfigError(f"delete route {net} dev {ifname}: {os.strerror(code)}"
                             + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""))


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
