"""What a virtual IP needs of this machine, checked before anything starts.

    keepalived_path()     keepalived is installed (found on PATH)
    address_on(dev, vip)  DEV exists and one of its subnets holds the VIP: this machine's own
                          address there (the source of its VRRP adverts)
    vrid_users(...)       other VRRP routers advertising our VRID on DEV for other addresses

Rules kept here: each check raises HaError with one line saying what to do; nothing here changes
the system (the VRRP listener only reads the adverts others send to the VRRP group).
"""

from __future__ import annotations

import ipaddress
import select
import shutil
import socket
import struct
import time

from .settings import HaError, IPInterface, Shared

VRRP_PROTO = 112
VRRP_GROUP = {4: "224.0.0.18", 6: "ff02::12"}
ADVERT = 1  # VRRP packet type
# VRRP routers advertise every second by default: a little more than one interval hears each of them.
LISTEN_SECONDS = 1.5
_SO_BINDTODEVICE = 25
_IFA_F_SECONDARY = 0x01
_IFA_F_TENTATIVE = 0x40


def keepalived_path() -> str:
    path = shutil.which("keepalived")
    if path is None:
        raise HaError("high availability needs keepalived, which is not installed here "
                      "(apt-get install keepalived)")
    return path


def _addresses(dev: str, version: int) -> list[tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, int]]:
    """DEV's addresses of one family with their flags; HaError if DEV does not exist."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=dev)
        if not index:
            raise HaError(f"device {dev!r} does not exist here")
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        out = []
        for msg in ipr.get_addr(index=index[0], family=family):
            ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if ip:
                out.append((ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}"), flags))
        return out


def address_on(dev: str, vip: IPInterface) -> str:
    """This machine's own address on DEV in the VIP's subnet (primary ones first); HaError if there is none."""
    found = _addresses(dev, vip.version)
    own = [(a, flags) for a, flags in found if a.ip != vip.ip and not a.ip.is_link_local
           and not flags & _IFA_F_TENTATIVE]
    holding = [a for a, flags in sorted(own, key=lambda af: bool(af[1] & _IFA_F_SECONDARY)) if vip.ip in a.network]
    if not holding:
        listed = ", ".join(str(a) for a, _ in own) or f"no IPv{vip.version} address"
        raise HaError(f"VIP {vip} is not in a subnet of {dev} ({listed}): clients could not reach it there")
    subnet = holding[0].network
    host = 32 if vip.version == 4 else 128
    if vip.network.prefixlen not in (subnet.prefixlen, host):
        raise HaError(f"VIP {vip}: {dev}'s subnet is {subnet}: give /{subnet.prefixlen} (or /{host})")
    return str(holding[0].ip)


def parse_advert(data: bytes, version: int) -> tuple[int, tuple[str, ...]] | None:
    """(VRID, addresses) of a VRRP v2/v3 advertisement (without its IP header), or None if it is not one."""
    size = 4 if version == 4 else 16
    if len(data) < 8 or data[0] >> 4 not in (2, 3) or data[0] & 0x0F != ADVERT:
        return None
    count = data[3]
    body = data[8:8 + size * count]
    if len(body) < size * count:
        return None
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return data[1], tuple(socket.inet_ntop(family, body[i:i + size]) for i in range(0, len(body), size))


def vrid_users(dev: str, shared: Shared, seconds: float = LISTEN_SECONDS) -> list[tuple[str, tuple[str, ...]]]:
    """(source, addresses) of the routers advertising SHARED's VRID on DEV for other addresses than its VIP,
    heard within SECONDS. Routers advertising our VIP are our own members, not a conflict."""
    version = shared.vip.version
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        index = socket.if_nametoindex(dev)
    except OSError:
        raise HaError(f"device {dev!r} does not exist here") from None
    try:
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, VRRP_PROTO)
    except PermissionError:
        raise HaError(f"listening for VRRP on {dev} needs CAP_NET_RAW (run as root)") from None
    users: dict[str, tuple[str, ...]] = {}
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, dev.encode())
        group = socket.inet_pton(family, VRRP_GROUP[version])
        if version == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + bytes(4) + struct.pack("@i", index))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", index))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data, source = sock.recvfrom(2048)
            if version == 4:
                data = data[(data[0] & 0x0F) * 4:]  # a raw IPv4 socket hands the IP header too
            advert = parse_advert(data, version)
            if advert is None:
                continue
            vrid, addresses = advert
            if vrid == shared.vrid and str(shared.vip.ip) not in addresses:
                users[source[0]] = addresses
    except OSError as exc:
        raise HaError(f"cannot listen for VRRP on {dev}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return sorted(users.items())


def check_vrid_free(dev: str, shared: Shared, seconds: float = LISTEN_SECONDS) -> None:
    users = vrid_users(dev, shared, seconds)
    if users:
        source, addresses = users[0]
        raise HaError(f"VRID {shared.vrid} is in use on {dev}: {source} advertises it for "
                      f"{', '.join(addresses) or 'no address'}; choose another with --vrid")


def check_machine(dev: str, shared: Shared, listen: float = LISTEN_SECONDS) -> str:
    """Every check, in the order a user would fix them; this machine's address on DEV."""
    keepalived_path()
    address = address_on(dev, shared.vip)
    if listen > 0:
        check_vrid_free(dev, shared, listen)
    return address
