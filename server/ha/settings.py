"""High availability's settings: what the gateways share, and what each member holds of its own.

In the registry:
    settings.extra["ha"]     {"vip": "10.70.0.100/24", "vrid": 101}        shared by every gateway
    gateways row of a member ha_role "vrrp", options["ha"] = {"dev": "eth0", "priority": 150,
                             "preempt": true, "address": "10.70.0.1"}      its own part; "address"
                             (its own address on DEV, where the others send their VRRP adverts)
                             is written by its daemon when it starts
    gateways.ha_state        master / backup / fault / stopped, written by its daemon

Rules kept here: pure (values in, values or HaError out); a stored value that cannot be read is
an HaError in one line, never a crash nor a half-read setting.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable

KEY = "ha"  # ServerSettings.extra[KEY], Gateway.options[KEY]
ROLE = "vrrp"  # Gateway.ha_role of a member
DEFAULT_PRIORITY = 100
STATES = ("master", "backup", "fault", "stopped")

_DEV = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class HaError(ValueError):
    """A high-availability setting or check we refuse; str() is one line for the user."""


def parse_vip(text: str) -> IPInterface:
    """'192.0.2.10/24' (the address and the prefix of its subnet) or an IPv6 one; HaError otherwise."""
    text = str(text).strip()
    if "/" not in text:
        raise HaError(f"VIP {text!r}: give it with the prefix of its subnet, e.g. 192.0.2.10/24")
    try:
        vip = ipaddress.ip_interface(text)
    except ValueError:
        raise HaError(f"VIP {text!r} is not ADDRESS/PREFIX (e.g. 192.0.2.10/24)") from None
    ip, net = vip.ip, vip.network
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        raise HaError(f"VIP {text!r}: not a unicast address a client can dial")
    if net.num_addresses > 2 and ip in (net.network_address, getattr(net, "broadcast_address", None)):
        raise HaError(f"VIP {text!r} is its subnet's {'network' if ip == net.network_address else 'broadcast'} "
                      "address")
    return vip


def default_vrid(vip: IPInterface) -> int:
    """A VRID from the address (1-255): two virtual IPs on one segment rarely share it."""
    return 1 + int(vip.ip) % 255


def check_vrid(vrid: int) -> int:
    if not isinstance(vrid, int) or not 1 <= vrid <= 255:
        raise HaError(f"VRID {vrid!r}: give a number from 1 to 255 (the same on every gateway of this VIP)")
    return vrid


def check_priority(priority: int) -> int:
    # 255 is VRRP's "address owner", which a moving address never is.
    if not isinstance(priority, int) or not 1 <= priority <= 254:
        raise HaError(f"priority {priority!r}: give a number from 1 to 254 (the highest holds the VIP)")
    return priority


def check_dev(dev: str) -> str:
    if not isinstance(dev, str) or not _DEV.fullmatch(dev):
        raise HaError(f"device {dev!r} is not an interface name")
    return dev


@dataclass(frozen=True)
class Shared:
    """The virtual IP every member serves, and the VRRP group it moves in."""

    vip: IPInterface
    vrid: int

    def to_json(self) -> dict[str, Any]:
        return {"vip": str(self.vip), "vrid": self.vrid}


@dataclass(frozen=True)
class Member:
    """One gateway's own part."""

    dev: str
    priority: int = DEFAULT_PRIORITY
    preempt: bool = True
    address: str | None = None  # its own address on DEV (VRRP's unicast source), from its daemon

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dev": self.dev, "priority": self.priority, "preempt": self.preempt}
        if self.address:
            out["address"] = self.address
        return out


def shared_from(extra: dict) -> Shared | None:
    """The shared setting in ServerSettings.extra, or None when HA is off."""
    data = extra.get(KEY) if isinstance(extra, dict) else None
    if not data:
        return None
    if not isinstance(data, dict):
        raise HaError(f"the registry's HA setting {data!r} cannot be read")
    vip = parse_vip(data.get("vip", ""))
    return Shared(vip, check_vrid(data.get("vrid", default_vrid(vip))))


def member_from(gateway) -> Member | None:
    """A registry Gateway's own part, or None if it is not a member."""
    if gateway is None or gateway.ha_role != ROLE:
        return None
    data = (gateway.options or {}).get(KEY)
    if not isinstance(data, dict):
        return None
    try:
        address = data.get("address")
        if address is not None:
            address = str(ipaddress.ip_address(address))
        return Member(check_dev(data.get("dev")), check_priority(int(data.get("priority", DEFAULT_PRIORITY))),
                      bool(data.get("preempt", True)), address)
    except (TypeError, ValueError) as exc:
        raise HaError(f"gateway {gateway.name}'s HA setting cannot be read: {exc}") from None


@dataclass(frozen=True)
class Plan:
    """What one gateway runs: the shared setting, its own part, and where its peers are."""

    gateway: str
    shared: Shared
    member: Member
    peers: tuple[str, ...] = ()  # the other members' addresses on the segment (VRRP unicast peers)


def plan_for(settings_extra: dict, gateways: Iterable, name: str) -> Plan | None:
    """GATEWAY NAME's plan from a registry snapshot's parts; None if HA is off or it is no member."""
    shared = shared_from(settings_extra)
    gateways = list(gateways)
    me = next((g for g in gateways if g.name == name), None)
    member = member_from(me)
    if shared is None or member is None:
        return None
    peers = []
    for g in gateways:
        if g.name == name:
            continue
        try:
            other = member_from(g)
        except HaError:
            continue  # another gateway's unreadable part: it cannot be a peer, and it is not ours to refuse
        if other is not None and other.address and \
                ipaddress.ip_address(other.address).version == shared.vip.version:
            peers.append(other.address)
    return Plan(name, shared, member, tuple(sorted(set(peers), key=ipaddress.ip_address)))


__all__ = ["HaError", "Shared", "Member", "Plan", "parse_vip", "default_vrid", "check_vrid", "check_priority",
           "check_dev", "shared_from", "member_from", "plan_for", "KEY", "ROLE", "STATES", "DEFAULT_PRIORITY"]
