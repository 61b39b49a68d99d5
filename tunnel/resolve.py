"""Endpoint host names: looked up when an interface comes up, and again while handshakes fail.

wg-quick resolves an `Endpoint = vpn.example.com:51820` once; a server on a
dynamic address or one that moved would then be lost for good. wireguard-go's
and the kernel's users run `reresolve-dns.sh` from a timer for this; we do it
inside the daemon: while handshakes with a peer keep failing, its host name is
looked up again every RERESOLVE_INTERVAL seconds.

Rules kept here:
- I/O lives here, never in the config parser or the protocol core: the config
  keeps (host, port); `resolve_endpoint` calls getaddrinfo;
- `Reresolver` reads no clock and starts no thread of its own: it is given
  `clock`, `resolve`, `background` (run a blocking call off the loop, since
  getaddrinfo can block for seconds) and `deliver` (run the answer in the
  loop's thread, where peers are changed), so tests drive it with a fake
  clock and resolver and no wait;
- the first failure starts the count: a name is looked up again only after
  INTERVAL seconds of failing, never on every retry; IP literals never are;
- a peer removed meanwhile is left alone; a lookup that fails is one log line;
- a peer with several endpoints is looked up under the one it uses now
  (`follow`); an answer for the one it left is dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any, Callable

log = logging.getLogger("tunnel")

RERESOLVE_INTERVAL = 15.0  # seconds of failing handshakes between two lookups of a host name
# The core's events that say "the handshake with this peer is not getting through".
HANDSHAKE_FAILURES = frozenset({"handshake_retry", "handshake_no_reply", "handshake_gave_up"})

Resolve = Callable[[str, int], tuple]


class EndpointResolutionError(OSError):
    """An Endpoint host name that did not resolve to an IPv4 or IPv6 address."""


def resolve_endpoint(host: str, port: int, family_preference: int = socket.AF_UNSPEC) -> tuple:
    """Resolve an Endpoint to a socket address (2-tuple for IPv4, 4-tuple for IPv6).

    `family_preference` is socket.AF_INET, AF_INET6 or AF_UNSPEC: the first
    address of the preferred family is taken when there is one, otherwise the
    resolver's first answer. Raises EndpointResolutionError.
    """
    try:
        answers = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as e:
        raise EndpointResolutionError(f"cannot resolve {host!r}: {e}") from None
    usable = [a for a in answers if a[0] in (socket.AF_INET, socket.AF_INET6)]
    if not usable:
        raise EndpointResolutionError(f"{host!r} has no IPv4 or IPv6 address")
    for family, _type, _proto, _canon, sockaddr in usable:
        if family == family_preference:
            return sockaddr
    return usable[0][4]


def endpoint_tuple(sockaddr) -> tuple:
    """Endpoints as recvmsg reports them: (host, port) for IPv4, (host, port, 0, scope) for IPv6.

    An IPv4-mapped IPv6 address (::ffff:192.0.2.1) becomes plain IPv4: our
    IPv6 socket is V6ONLY, so such a peer is reached, and heard from, on the
    IPv4 socket only, and routes, MTU and the kill switch must see IPv4 too.
    A link-local address keeps its scope (the interface index).
    """
    host, port = sockaddr[0], sockaddr[1]
    if len(sockaddr) == 2:
        return (host, port)
    host = host.partition("%")[0]  # the scope travels as the index
    mapped = _v4_mapped(host)
    if mapped is not None:
        return (mapped, port)
    return (host, port, 0, sockaddr[3] if len(sockaddr) > 3 else 0)


def _v4_mapped(host: str) -> str | None:
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return None
    return str(mapped) if mapped is not None else None


def scope_index(zone: str) -> int:
    """An IPv6 scope as written after '%' (an interface name, or its index) to the index.

    Raises EndpointResolutionError for a name no interface of this namespace has.
    """
    if zone.isdigit():
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise EndpointResolutionError(f"no interface named {zone!r} for the scope of a link-local address") from None


def scope_name(index: int) -> str:
    """The interface name of an IPv6 scope, or its number if no interface has it (any more)."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def format_endpoint(endpoint) -> str:
    """An endpoint as wg prints it: 192.0.2.1:51820, [fd00::1]:51820, [fe80::1%eth0]:51820."""
    host, port = endpoint[0], endpoint[1]
    if ":" not in host:
        return f"{host}:{port}"
    scope = endpoint[3] if len(endpoint) > 3 else 0
    zone = f"%{scope_name(scope)}" if scope and "%" not in host else ""
    return f"[{host}{zone}]:{port}"


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def in_thread(fn: Callable[[], None]) -> None:
    """The default `background`: a daemon thread, so a hung lookup never holds up exit."""
    threading.Thread(target=fn, name="resolve", daemon=True).start()


class Reresolver:
    """Looks a peer's Endpoint host name up again while its handshakes keep failing.

    HOSTS maps a peer's public key to the (host, port) of its config's
    Endpoint. Feed it the core's events with `on_event`.
    """

    def __init__(self, hosts: dict[bytes, tuple[str, int]], *, clock: Callable[[], float],
                 resolve: Resolve = resolve_endpoint, background: Callable[[Callable[[], None]], None] = in_thread,
                 deliver: Callable[[Callable[[], None]], None], ifname: str = "",
                 interval: float = RERESOLVE_INTERVAL):
        self.hosts = {key: ep for key, ep in hosts.items() if not is_ip_literal(ep[0])}
        self.clock = clock
        self.resolve = resolve
        self.background = background
        self.deliver = deliver
        self.ifname = ifname
        self.interval = interval
        self._since: dict[bytes, float] = {}  # public key -> when the failing (or the last lookup) began

    def follow(self, key: bytes, endpoint: tuple[str, int]) -> None:
        """Peer KEY now uses ENDPOINT (host, port), another of its endpoints (tunnel/failover.py)."""
        self._since.pop(key, None)
        if is_ip_literal(endpoint[0]):
            self.hosts.pop(key, None)
        else:
            self.hosts[key] = endpoint

    def on_event(self, ev: Any) -> None:
        if ev.kind not in HANDSHAKE_FAILURES:
            return
        key = ev.peer.public_key
        now = self.clock()
        since = self._since.setdefault(key, now)
        if now - since >= self.interval:
            self._since[key] = now
            self._lookup(ev.peer)

    def _lookup(self, peer: Any) -> None:
        endpoint = self.hosts.get(peer.public_key)
        if endpoint is None:
            return
        host, port = endpoint

        def work() -> None:  # off the loop: getaddrinfo may block
            try:
                new = endpoint_tuple(self.resolve(host, port))
            except EndpointResolutionError as exc:
                log.info("%s: cannot resolve endpoint %s: %s", self.ifname, host, exc)
                return

            def apply() -> None:  # in the loop's thread: the only one that changes peers
                if self.hosts.get(peer.public_key) != endpoint:
                    return  # the peer moved to another of its endpoints meanwhile
                if not peer.removed and new != peer.endpoint:
                    log.info("%s: peer %s: endpoint %s now resolves to %s", self.ifname, peer.name or "",
                             host, new[0])
                    peer.endpoint = new

            self.deliver(apply)

        self.background(work)
