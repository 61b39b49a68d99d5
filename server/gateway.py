"""The server as a NAT gateway for its clients.

What `apply_gateway` changes, each recorded in the Journal first:
- forwarding: net.ipv4.ip_forward for IPv4 pools, net.ipv6.conf.all.forwarding
  for IPv6 pools (kind "routing.sysctl": restored only while still ours);
- one nftables table `inet tunnel_gw_IFACE` (kind "nft_table") with
    forward:     client-to-client traffic (iif IFACE and oif IFACE) dropped
                 unless allowed; TCP MSS clamped to the route MTU on the way
                 into the tunnel;
    postrouting: the client pools masqueraded when they leave through any
                 interface other than the tunnel (site LAN, internet);
- routes to site subnets behind a router (kind "routing.route"); directly
  attached site LANs need none.

Rules kept here:
- our forward chain only drops (client-to-client); it never accepts on
  behalf of the host firewall: if the host's own forward policy is drop
  (Docker sets one), the admin must allow the tunnel there;
- client-to-client traffic reaches the kernel only if the data plane hands
  every decrypted packet to the TUN device, which it must (no shortcut
  between peers inside the process), so this policy is enforced here;
- enabling net.ipv6.conf.all.forwarding makes Linux ignore router
  advertisements on interfaces with accept_ra=1: a gateway that learns its
  own IPv6 default route by SLAAC needs accept_ra=2 on its uplink.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from pyroute2 import IPRoute

from tunnel import nft
from tunnel.netconfig import add_route
from tunnel.sysctl import set_sysctl
from tunnel.undo import Journal

FORWARD_SYSCTL = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
C2C_COMMENT = "tunnel client-to-client drop"


def table_name(ifname: str) -> str:
    return nft.table_name("gw", ifname)


def ruleset(ifname: str, pools: list[str], masquerade: bool, allow_client_to_client: bool) -> str:
    """The body of the gateway table (exposed for tests and `tunnel status`)."""
    nft.check_ifname(ifname)
    nets = [ipaddress.ip_network(p, strict=False) for p in pools]
    forward = [
        "chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f'    oifname "{ifname}" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu',
    ]
    if not allow_client_to_client:
        # Counted for unicast only (the figure `tunnel status` shows); the
        # kernel also offers some link-scope multicast here, dropped uncounted.
        forward.append(f'    iifname "{ifname}" oifname "{ifname}" meta pkttype unicast '
                       f'counter drop comment "{C2C_COMMENT}"')
        forward.append(f'    iifname "{ifname}" oifname "{ifname}" drop')
    forward.append("}")
    lines = forward
    if masquerade and nets:
        lines += [
            "chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
        ]
        for net in nets:
            proto = "ip" if net.version == 4 else "ip6"
            lines.append(f'    {proto} saddr {net} oifname != "{ifname}" masquerade')
        lines.append("}")
    return "\n".join(lines)


def apply_gateway(journal: Journal, ifname: str, pools: list[str], masquerade: bool = True,
                  allow_client_to_client: bool = False,
                  site_routes: Iterable[tuple[str, str]] = ()) -> None:
    """Make this namespace forward and NAT the client POOLS arriving on IFNAME.

    SITE_ROUTES are (subnet, gateway) pairs for site networks behind a
    router; the gateway must be reachable on an attached network.
    """
    families = {ipaddress.ip_network(p, strict=False).version for p in pools}
    body = ruleset(ifname, pools, masquerade, allow_client_to_client)
    site_routes = [(str(ipaddress.ip_network(n)), str(ipaddress.ip_address(g)))
                   for n, g in site_routes]
    # Policy (NAT, client isolation) before forwarding is switched on, so no
    # client packet is ever forwarded un-NATed or to another client; undo
    # runs newest first, so forwarding also goes off before the policy goes.
    name = table_name(ifname)
    nft.require()  # before the journal names a table that could never be made, or undone
    journal.record("nft_table", family="inet", name=name)
    nft.replace_table("inet", name, body)
    if site_routes:
        with IPRoute() as ipr:
            for net, gateway in site_routes:
                add_route(journal, ipr, net, gateway=gateway)
    for family in sorted(families):
        set_sysctl(journal, FORWARD_SYSCTL[family], "1")


def client_to_client_dropped(ifname: str) -> int:
    return nft.counter_packets("inet", table_name(ifname), "forward", C2C_COMMENT)


def set_client_to_client(ifname: str, pools: list[str], masquerade: bool, allow: bool) -> None:
    """Switch the blanket client-to-client drop of a running gateway (one atomic replace of its
    table, whose undo apply_gateway recorded): an access policy in force decides it instead."""
    nft.replace_table("inet", table_name(ifname), ruleset(ifname, pools, masquerade, allow))
