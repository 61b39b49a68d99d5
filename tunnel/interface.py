"""One running interface: `tunnel up CONFIG` from start to clean exit.

Order of bring-up (each OS change recorded in the journal before it is made):
    undo whatever a crashed earlier run left (its state file)
    PreUp hooks
    TUN device, addresses, MTU, link up
    UDP sockets (v4 and v6, SO_MARK = FwMark; bound to ListenAddress if given)
    routes for AllowedIPs
    each role's setup: the roles whose config asks for them (the client's
    full-tunnel policy routing, DNS and kill switch for a /0 in AllowedIPs,
    as wg-quick decides), then those handed in (`tunnel server up`: NAT)
    PostUp hooks; control socket, metrics, drop summary, the endpoint keeper
    (handshakes to the peers we had a moment ago: tunnel/resume.py), fail-over
    between a peer's endpoints (tunnel/failover.py), roles' services; "ready"
and on SIGINT/SIGTERM the reverse: PreDown, undo everything, PostDown.

Rules kept here:
- this module and the data plane are the only places that read the clock
  (re-resolution takes the one in Options, so tests can give their own);
- this module names no role: roles are discovered (tunnel/role.py) or handed
  in through Options.roles; their code lives in their own packages.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import hooks, memory, metrics, netconfig, role, sdnotify
from .config import MTU_MIN_IPV6, Config
from .dataplane import DataPlane, log_event
from .failover import Failover, resolve_endpoints
from .netconfig import DEFAULT_FWMARK
from .protocol import Device, Event
from .protocol.constants import DEFAULT_MTU, OVERHEAD_IPV6
from .resolve import EndpointResolutionError, Reresolver, Resolve, endpoint_tuple, in_thread, resolve_endpoint
from .services import ServiceError, start_services
from .tun import Tun, TunError
from .udp import UdpEndpoint
from .undo import Journal

log = logging.getLogger("tunnel")

# The UDP receive buffer bounds the queue in front of a busy receiver: 256 KB
# is ~1.2 ms at 1.7 Gbit/s (wireguard-go's 7 MB would be ~30 ms under load).
UDP_BUFFER = int(os.environ.get("TUNNEL_UDP_BUFFER", 256 << 10))


class InterfaceError(RuntimeError):
    """Bring-up failed for a reason the user can act on (printed without a traceback)."""


@dataclass
class Options:
    """What the caller may change beyond the config file."""

    state_dir: str | None = None
    vnet_hdr: bool = True
    resolv_conf: str = "/etc/resolv.conf"
    use_resolved: bool | None = None
    killswitch: bool | None = None  # None: on for full-tunnel configs
    on_ready: Callable[["Interface"], None] | None = None
    # Roles handed in by whoever runs the interface, after those the config asks for.
    roles: list[role.Role] = field(default_factory=list)
    # Plain setup steps: the same as a role with only `setup` (run after `roles`).
    extra_setup: list[Callable[["Interface"], None]] = field(default_factory=list)
    # Started after the built-in services, once the data plane exists; each returns
    # an object whose close() is called (newest first) before tear-down.
    services: list[Callable[["Interface"], object]] = field(default_factory=list)
    # Endpoint host names: how they are looked up, and the clock of looking again.
    resolver: Resolve = resolve_endpoint
    clock: Callable[[], float] = time.monotonic
    background: Callable[[Callable[[], None]], None] = in_thread


class Interface:
    def __init__(self, config: Config, options: Options | None = None):
        if not config.name:
            raise InterfaceError("the configuration has no interface name")
        self.config = config
        self.name = config.name
        self.options = options or Options()
        self.journal = Journal.for_interface(self.name, self.options.state_dir)
        self.tun: Tun | None = None
        self.udp: UdpEndpoint | None = None
        self.device: Device | None = None
        self.plane: DataPlane | None = None
        self.fwmark: int | None = None
        # What roles' services add to `tunnel show` (name -> a function returning JSON-able data)
        # and to the metrics (functions yielding Prometheus metric families); read on each request.
        self.status_providers: dict[str, Callable[[], dict]] = {}
        self.metric_families: list[Callable[[], Iterable]] = []
        # Called in the loop's thread with each of the core's events (after the log line).
        self.event_listeners: list[Callable[[Event], None]] = []
        self.full_tunnel = (False, False)  # (v4, v6): AllowedIPs holds 0.0.0.0/0, ::/0
        self.table = _table_setting(config.interface.table)  # "auto", "off" or a table
        self.roles: list[role.Role] = []
        self.reresolver = Reresolver(
            {p.public_key: p.endpoint for p in config.peers if p.endpoint is not None},
            clock=self.options.clock, resolve=self.options.resolver, background=self.options.background,
            deliver=self._in_loop, ifname=self.name)
        self.failover: Failover | None = None  # peers with several endpoints (bring_up)

    # ------------------------------------------------------------------

    def bring_up(self) -> None:
        cfg = self.config
        iface = cfg.interface
        elsewhere = self.journal.elsewhere()
        if elsewhere:  # not ours to undo, nor to write into: the other run's changes stay listed
            raise InterfaceError(f"{self.name}: {elsewhere}")
        if self.journal.pending:
            log.info("%s: undoing what an earlier run left behind", self.name)
            for failure in self.journal.undo_all():
                log.warning("%s: %s", self.name, failure)
        hooks.run_hooks(iface.pre_up, self.name, "PreUp")

        hosts = listen_addresses(iface.extensions.get("ListenAddress", []))
        allowed = [n for p in cfg.peers for n in p.allowed_networks()]  # objects: parsed once, not per use
        self.full_tunnel = netconfig.is_full_tunnel(allowed)
        full = any(self.full_tunnel)
        fwmark = iface.fwmark
        if full and not fwmark and self.table != "off":
            fwmark = DEFAULT_FWMARK
        self.fwmark = fwmark or None

        # Resolved once: the MTU is derived from these, and the peers get them.
        endpoints = {}
        choices = {}  # peers with several endpoints: all of them, the first that resolved first
        for p in cfg.peers:
            if p.failover_endpoints:
                choices[p.public_key] = self._resolve_all(p.endpoints())
                endpoints[p.public_key] = choices[p.public_key][0].address
            elif p.endpoint is not None:
                endpoints[p.public_key] = self._resolve(p.endpoint)
        every = [*endpoints.values(), *(e.address for found in choices.values() for e in found)]
        mtu = iface.mtu or _derive_mtu(every)
        addresses = [str(a) for a in iface.addresses]
        if mtu < MTU_MIN_IPV6:
            # Linux turns IPv6 off on a link below 1280 (the parser refuses such an
            # MTU= with an IPv6 Address; a derived one is taken, as wg-quick does):
            # carry IPv4 only, and let the client role block IPv6 instead of routing it here.
            why = "" if iface.mtu else f" (the route to the endpoint's MTU less {OVERHEAD_IPV6})"
            log.warning("%s: MTU %d%s: IPv6 inside the tunnel needs 1280, so this interface carries IPv4 only",
                        self.name, mtu, why)
            addresses = [a for a in addresses if ":" not in a]
            allowed = [n for n in allowed if n.version == 4]
            self.full_tunnel = (self.full_tunnel[0], False)
        self.journal.record("link", ifname=self.name)
        try:
            self.tun = Tun(self.name, vnet_hdr=self.options.vnet_hdr, offload=self.options.vnet_hdr)
        except TunError as exc:
            raise InterfaceError(f"cannot create {self.name}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise InterfaceError(str(exc)) from None
        netconfig.set_up(self.journal, self.name, addresses, mtu)

        try:
            self.udp = UdpEndpoint(iface.listen_port or 0, fwmark=self.fwmark or 0,
                                   buffer_size=UDP_BUFFER, freebind=bool(hosts), **hosts)
        except OSError as exc:
            where = "".join(f" on {h}" for h in hosts.values())
            raise InterfaceError(f"cannot bind UDP port {iface.listen_port}{where}: {exc.strerror or exc}") from None

        self.device = Device(iface.private_key, wall_epoch=time.time() - time.monotonic(), mtu=mtu)
        for p in cfg.peers:
            self.device.add_peer(
                p.public_key,
                preshared_key=p.preshared_key,
                allowed_ips=p.allowed_networks(),
                endpoint=endpoints.get(p.public_key),
                persistent_keepalive=p.persistent_keepalive or 0,
                name=p.name,
            )

        self.failover = Failover(self.device, self.device.counters, ifname=self.name,
                                 follow=self.reresolver.follow)
        now = time.monotonic()
        for key, found in choices.items():
            self.failover.add(self.device.peers[key], found, now)
            self.reresolver.follow(key, (found[0].host, found[0].port))

        self._routes(allowed)
        self.roles = self._roles()
        for r in self.roles:
            r.setup(self)
        # The first handshakes (to configured endpoints, and to the peers of the last run)
        # are the endpoint keeper's, a service: paced, once the loop runs.
        self.plane = DataPlane(self.device, self.tun, self.udp, on_event=self._on_event)
        hooks.run_hooks(iface.post_up, self.name, "PostUp")
        log.info("%s: up, listening on UDP port %d, %d peer(s), MTU %d", self.name, self.udp.port, len(cfg.peers), mtu)
        # The Device holds the peers now; the config's copies (~1 KB each) go.
        self.config = dataclasses.replace(cfg, peers=[])

    def _on_event(self, ev) -> None:
        assert self.plane is not None
        log_event(ev)
        self.reresolver.on_event(ev)
        if self.failover is not None:
            self.failover.on_event(ev)
        for listener in self.event_listeners:
            listener(ev)

    def _in_loop(self, fn: Callable[[], None]) -> None:
        assert self.plane is not None
        self.plane.call_soon_threadsafe(fn)

    def _resolve(self, endpoint: tuple[str, int]):
        host, port = endpoint
        try:
            return endpoint_tuple(self.options.resolver(host, port))
        except EndpointResolutionError as exc:
            raise InterfaceError(f"cannot resolve endpoint {host}: {exc}") from None

    def _resolve_all(self, endpoints: list[tuple[str, int]]):
        """A peer's several endpoints: those that resolve, in order; an error only if none does."""
        found, failures = resolve_endpoints(endpoints, self.options.resolver)
        if not found:
            raise InterfaceError("cannot resolve any endpoint of a peer: " + "; ".join(failures))
        for failure in failures:
            log.warning("%s: endpoint %s left out of fail-over until the next start", self.name, failure)
        return found

    def _routes(self, allowed: list) -> None:
        if self.table == "off":
            return
        # The /0 networks are policy routing's: a role's (client/), as in wg-quick.
        others = [n for n in allowed if n.prefixlen]
        table_id = None if self.table == "auto" else int(self.table)
        if others:
            netconfig.add_routes(self.journal, self.name, others, table=table_id)

    def _roles(self) -> list[role.Role]:
        """The roles the config asks for (each declared role decides), then those handed in."""
        chosen: list[role.Role] = []
        try:
            for cls in role.role_classes():
                applied = cls.for_interface(self)
                if applied is not None:
                    chosen.append(applied)
        except role.RoleError as exc:
            raise InterfaceError(str(exc)) from None
        chosen += self.options.roles
        if self.options.extra_setup:
            chosen.append(role.SetupSteps(self.options.extra_setup))
        return chosen

    # ------------------------------------------------------------------

    def run(self) -> None:
        """Bring up, serve until SIGINT/SIGTERM, tear down. Always tears down."""
        old = {}
        services: list = []
        try:
            # What a service will need, asked before anything is changed (not after a full bring-up).
            metrics.check(self.config.interface.extension("MetricsAddress"))
        except metrics.MetricsError as exc:
            raise InterfaceError(f"{self.name}: {exc}") from None
        try:
            self.bring_up()
            assert self.plane is not None
            # Control socket (wg show/set), metrics, drop summaries, roles' services.
            try:
                services = start_services(self, self.roles)
            except ServiceError as exc:
                raise InterfaceError(str(exc)) from None
            if self.failover is not None and self.failover.watched:
                services.append(self.failover.start(self.plane))
            for start in self.options.services:
                services.append(start(self))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old[sig] = signal.signal(sig, lambda s, f: self.plane.stop())
            if self.options.on_ready:
                self.options.on_ready(self)
            # Type=notify: the interface, its routes and the control socket exist now.
            sdnotify.notify(f"READY=1\nSTATUS={self.name} up")
            memory.give_back()  # what only the bring-up needed: RSS from here on is the idle daemon's
            self.plane.run()
            if self.plane.tun_gone:
                log.warning("%s: the interface was deleted from outside", self.name)
            log.info("%s: stopping", self.name)
            sdnotify.notify("STOPPING=1")
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for service in reversed(services):
                service.close()
            self.tear_down()

    def tear_down(self) -> None:
        iface = self.config.interface
        try:
            hooks.run_hooks(iface.pre_down, self.name, "PreDown")
        except hooks.HookError as exc:
            log.warning("%s", exc)
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.plane is not None:
            self.plane.close()
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        if self.journal.elsewhere() is None:  # else bring-up refused it and changed nothing
            for failure in self.journal.undo_all():
                log.warning("%s: %s", self.name, failure)
        try:
            hooks.run_hooks(iface.post_down, self.name, "PostDown")
        except hooks.HookError as exc:
            log.warning("%s", exc)


def down(name: str, state_dir: str | None = None) -> list[str]:
    """Remove whatever a crashed `up` of interface `name` left; safe to run twice.

    Raises InterfaceError if that run was in another network namespace (its
    journal is left for `tunnel down` there).
    """
    # The journal holds every change the run made (the TUN link, addresses,
    # routes, rules, nft tables, DNS, sysctls, the control socket).
    journal = Journal.for_interface(name, state_dir)
    elsewhere = journal.elsewhere()
    if elsewhere:
        raise InterfaceError(f"{name}: {elsewhere}")
    return journal.undo_all()


def _derive_mtu(endpoints) -> int:
    """wg-quick's rule: the smallest MTU of the routes to the endpoints less 80 (IPv6's
    overhead, so the MTU still fits if the endpoint roams to IPv6), however small (a
    bigger one would not fit the path); 1420 without endpoints or routes."""
    best = None
    for ep in endpoints:
        try:
            route = netconfig.route_get(ep[0])
        except netconfig.NetconfigError:  # no route yet: fall back like wg-quick
            continue
        if route.mtu:
            m = route.mtu - OVERHEAD_IPV6
            best = m if best is None else min(best, m)
    return best if best is not None else DEFAULT_MTU


def listen_addresses(values: list[str]) -> dict[str, str]:
    """ListenAddress values (comma-separated or repeated, one address per family) as UdpEndpoint's
    host4/host6 keywords; InterfaceError in one line for anything else."""
    hosts: dict[str, str] = {}
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                address = ipaddress.ip_address(item.strip("[]"))
            except ValueError:
                raise InterfaceError(f"ListenAddress {item!r} is not an IP address") from None
            if address.is_multicast or address.is_unspecified:
                raise InterfaceError(f"ListenAddress {item!r}: give one unicast address of this machine")
            key = "host4" if address.version == 4 else "host6"
            if key in hosts and hosts[key] != str(address):
                raise InterfaceError(f"ListenAddress: one IPv{address.version} address at most "
                                     f"({hosts[key]} and {address})")
            hosts[key] = str(address)
    return hosts


def _table_setting(table: str | None) -> str:
    if table is None:
        return "auto"
    t = table.strip().lower()
    return t if t in ("off", "auto") else table


__all__ = ["Interface", "InterfaceError", "Options", "down"]
