"""`tunnel server up`: the interface from IFACE.conf, the NAT gateway, and the reconciler that
keeps both following the registry.

Start-up: IFACE.conf is regenerated from the registry (so the interface comes
up with today's clients), then `tunnel up` of it runs with the server role
(server/role.py): the gateway as its setup, the reconciler as its service, the registry's
peer_endpoints as where clients' endpoints are kept for resuming them after a restart, and,
when this gateway serves a virtual IP, keepalived beside it (server/ha): everything it needs of
the machine (keepalived, the device, the subnet, a free VRID) is checked before anything starts. A registry that cannot be
reached at start (a PostgreSQL elsewhere) is not fatal: the daemon serves
IFACE.conf as last generated, with the settings and expiries of
IFACE.cache.json, and the reconciler catches up when it returns.
"""

from __future__ import annotations

import logging

from server import statecache
from server.access.control import AccessControl
from server.endpointstore import RegistryEndpointStore
from server.ha.checks import check_machine
from server.ha.service import HaService
from server.ha.settings import HaError, Plan, plan_for
from server.layout import Local, Paths
from server.provision import ProvisionError, locate, paths, publish
from server.reconcile import Reconciler
from server.registry import RegistryError, RegistryUnavailable, ServerSettings, Snapshot, open_registry
from server.role import ServerRole
from tunnel.config import ConfigError, load_config
from tunnel.protocol.crypto import encode_key
from tunnel.runner import run_up

log = logging.getLogger("tunnel")


def _offline_start(p: Paths, exc: Exception) -> Snapshot | None:
    """What to serve while the registry is unreachable: the last cache, else IFACE.conf alone."""
    try:
        config = load_config(p.conf)
    except ConfigError as err:
        raise ProvisionError(f"{exc}, and {err}") from None
    log.warning("%s: %s; serving the clients of %s until it is back", p.ifname, exc, p.conf)
    snap = statecache.load(p, encode_key(config.interface.private_key))
    if snap is None:
        pools = tuple(str(a.network) for a in config.interface.addresses)
        snap = Snapshot(revision=-1, clients=(), policy=None, sessions=(), gateways=(),
                        settings=ServerSettings(private_key="", pools=pools))
        log.warning("%s: no cache of the registry: NAT on for %s, clients never expire until it is back",
                    p.ifname, ", ".join(pools))
    return snap


def run_server(directory: str | None, ifname: str | None, **up_options) -> str | None:
    """`tunnel up IFACE.conf` with the server role (NAT gateway, reconciler); None or the failure message."""
    prepared = _prepare(directory, ifname)
    if isinstance(prepared, str):
        return prepared
    conf, role = prepared  # no snapshot held here: the reconciler's is the one (10,000 clients: ~6 MB)
    return run_up(conf, roles=[role], **up_options)


def _prepare(directory: str | None, ifname: str | None) -> tuple[str, ServerRole] | str:
    """IFACE.conf published and the server role ready; or the failure message."""
    registry = None
    try:
        p = paths(directory, ifname)
        local, migration = locate(p)
        if migration is not None:
            log.info("%s: the server's files were migrated into the registry %s (old files in %s)", p.ifname,
                     local.registry, migration.backup)
        try:
            registry = open_registry(local.registry, create=False)
            snap = registry.snapshot()
            publish(p, snap, local)
        except RegistryUnavailable as exc:
            if registry is not None:
                registry.close()
                registry = None
            snap = _offline_start(p, exc)
    except RegistryError as exc:
        if registry is not None:
            registry.close()
        return str(exc)
    except ProvisionError as exc:
        return str(exc)
    live = snap if snap.revision >= 0 else None
    try:
        ha_plan = _ha_plan(snap, local.gateway)
    except HaError as exc:
        if registry is not None:
            registry.close()
        return f"{p.ifname}: {exc}"

    def opener():
        return open_registry(local.registry, create=False)

    reconciler = Reconciler(opener, registry=registry, snapshot=live,
                            on_snapshot=lambda s, now: _publish(p, s, local, now))
    access = AccessControl(opener, reconciler, gateway=local.gateway, state_dir=p.directory)
    # A member of a VIP resumes its peers when it becomes master (server/ha), not at start.
    endpoints = RegistryEndpointStore(opener, gateway=local.gateway, resume_at_start=ha_plan is None,
                                      where=registry.location if registry is not None else "the registry")
    ha = None
    if ha_plan is not None:
        plan, address = ha_plan
        ha = HaService(opener, reconciler, plan, address=address, server_dir=p.directory)
    return p.conf, ServerRole(snap.settings, reconciler, access, endpoints, ha)


def _ha_plan(snap: Snapshot, gateway: str) -> tuple[Plan, str] | None:
    """This gateway's VIP plan and its own address on the device, every check passed; None if HA is off."""
    plan = plan_for(snap.settings.extra, snap.gateways, gateway)
    if plan is None:
        return None
    address = check_machine(plan.member.dev, plan.shared)
    return plan, address


def _publish(p: Paths, snap: Snapshot, local: Local, now: float) -> None:
    if publish(p, snap, local, now):
        log.debug("%s: %s rewritten for registry revision %d", p.ifname, p.conf, snap.revision)

