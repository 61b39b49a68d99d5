"""`tunnel server ha ...` on the registry: the library side of server/ha/cli.py.

    configure(dir, iface, vip, dev, priority=, preempt=, vrid=)   this gateway serves VIP
    disable(dir, iface)                                            this gateway no longer does

Rules kept here:
- everything is checked before anything is written: the VIP's form, the device, the subnet,
  keepalived, a VRID nobody else advertises on the segment; a refusal is one line (ProvisionError);
- the shared part (VIP, VRID) goes in the registry's settings, this gateway's part (device,
  priority, preemption) in its own gateway row: every gateway of a shared registry sees both;
- IFACE.conf is regenerated (ListenAddress = the VIP), and `add-client` / `show-client` write the
  VIP as the clients' endpoint from now on; a running daemon takes the change at its next start
  (the caller is told).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from server.provision import ProvisionError, _errors, open_server, publish
from tunnel import control

from .checks import LISTEN_SECONDS, check_machine
from .settings import (
    DEFAULT_PRIORITY,
    KEY,
    ROLE,
    HaError,
    Member,
    Shared,
    check_dev,
    check_priority,
    check_vrid,
    default_vrid,
    member_from,
    parse_vip,
    shared_from,
)


@dataclass
class Configured:
    gateway: str
    shared: Shared
    member: Member
    shared_changed: bool  # the VIP or VRID changed for every gateway
    daemon_running: bool  # this machine's server runs: it applies this at its next start


def _running(ifname: str, socket_dir: str | None) -> bool:
    return os.path.exists(control.socket_path(ifname, socket_dir or control.SOCKET_DIR))


def configure(directory: str | None, ifname: str | None, vip: str, dev: str, *, priority: int | None = None,
              preempt: bool | None = None, vrid: int | None = None, listen: float = LISTEN_SECONDS,
              socket_dir: str | None = None) -> Configured:
    try:
        address = parse_vip(vip)
        check_dev(dev)
        if priority is not None:
            check_priority(priority)
        if vrid is not None:
            check_vrid(vrid)
    except HaError as exc:
        raise ProvisionError(str(exc)) from None
    with open_server(directory, ifname) as srv, _errors():
        snap = srv.registry.snapshot()
        name = srv.local.gateway
        try:
            current = shared_from(snap.settings.extra)
        except HaError:
            current = None  # unreadable: this command replaces it
        if vrid is None:
            vrid = current.vrid if current is not None and current.vip == address else default_vrid(address)
        shared = Shared(address, vrid)
        me = next((g for g in snap.gateways if g.name == name), None)
        try:
            old = member_from(me)
        except HaError:
            old = None
        try:
            own_address = check_machine(dev, shared, listen)
        except HaError as exc:
            raise ProvisionError(str(exc)) from None
        member = Member(dev, priority if priority is not None else (old.priority if old else DEFAULT_PRIORITY),
                        preempt if preempt is not None else (old.preempt if old else True), own_address)
        if me is None:  # a gateway the registry forgot (removed by hand): it is this one
            me = srv.registry.register_gateway(name)
        options = dict(me.options or {})
        options[KEY] = member.to_json()
        srv.registry.set_gateway(name, ha_role=ROLE, options=options)
        if shared != current:
            srv.registry.update_settings(**{KEY: shared.to_json()})
        publish(srv.paths, srv.registry.snapshot(), srv.local)
        return Configured(name, shared, member, current is not None and shared != current,
                          _running(srv.paths.ifname, socket_dir))


def disable(directory: str | None, ifname: str | None, socket_dir: str | None = None) -> tuple[str, bool, bool]:
    """(gateway name, whether the shared setting went too (no member left), daemon running)."""
    with open_server(directory, ifname) as srv, _errors():
        snap = srv.registry.snapshot()
        name = srv.local.gateway
        me = next((g for g in snap.gateways if g.name == name), None)
        if me is None or me.ha_role != ROLE:
            raise ProvisionError(f"high availability is not on for gateway {name}")
        options = {k: v for k, v in (me.options or {}).items() if k != KEY}
        srv.registry.set_gateway(name, ha_role=None, ha_state=None, options=options)
        others = []
        for g in snap.gateways:
            try:
                if g.name != name and member_from(g) is not None:
                    others.append(g.name)
            except HaError:
                continue
        last = not others
        if last:
            srv.registry.update_settings(**{KEY: None})
        publish(srv.paths, srv.registry.snapshot(), srv.local)
        return name, last, _running(srv.paths.ifname, socket_dir)
