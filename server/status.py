"""`tunnel server show [--json]`: the server as this gateway sees it.

From the registry: where clients dial, the pools, the clients, the virtual IP and every gateway
(its endpoint, its HA state as it last wrote it, its heartbeat); from this machine's daemon (its
control socket, read only): whether it runs, its peers, and its HA state as keepalived last told
it (fresher than the registry's row).

Rules kept here: a stopped daemon or an HA setting that cannot be read is shown, not raised; the
registry's URL is shown without its password.
"""

from __future__ import annotations

import time

from server.ha.settings import HaError, member_from, shared_from
from server.provision import _errors, open_server
from server.registry import is_postgres
from server.render import client_endpoints
from tunnel import control
from tunnel.show import ago, status as daemon_status


def _shown(location: str) -> str:
    if is_postgres(location):
        from server.registry.postgres import redact

        return redact(location)
    return location


def server_status(directory: str | None, ifname: str | None, socket_dir: str | None = None,
                  now: float | None = None) -> dict:
    now = time.time() if now is None else now
    with open_server(directory, ifname) as srv, _errors():
        snap = srv.registry.snapshot()
        local, paths = srv.local, srv.paths
    s = snap.settings
    out: dict = {"interface": paths.ifname, "gateway": local.gateway, "registry": _shown(local.registry),
                 "revision": snap.revision, "pools": list(s.pools), "clients": len(snap.clients),
                 "active_clients": len(snap.active_clients(now))}
    host, port = client_endpoints(s, snap.gateways)[0]
    out["clients_dial"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        shared = shared_from(s.extra)
        out["ha"] = shared.to_json() if shared is not None else None
    except HaError as exc:
        out["ha"] = {"error": str(exc)}
    gateways = []
    for g in snap.gateways:
        entry = {"name": g.name, "this": g.name == local.gateway, "endpoint": g.endpoint, "ha_state": g.ha_state,
                 "last_heartbeat": g.last_heartbeat,
                 "heartbeat_age": None if g.last_heartbeat is None else max(0.0, now - g.last_heartbeat)}
        try:
            member = member_from(g)
            entry["ha"] = member.to_json() if member is not None else None
        except HaError as exc:
            entry["ha"] = {"error": str(exc)}
        gateways.append(entry)
    out["gateways"] = gateways
    try:
        state = daemon_status(paths.ifname, socket_dir or control.SOCKET_DIR)
        extra = state.get("extra") or {}
        out["daemon"] = {"running": True, "peers": len(state.get("peers", [])), "ha": extra.get("ha")}
    except control.ControlError:
        out["daemon"] = {"running": False}
    return out


def render(state: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"server {state['interface']}, gateway {state['gateway']}, registry {state['registry']} "
             f"(revision {state['revision']})",
             f"  clients dial {state['clients_dial']}; pools {', '.join(state['pools'])}; "
             f"{state['clients']} client(s), {state['active_clients']} active"]
    ha = state.get("ha")
    if ha and "error" in ha:
        lines.append(f"  virtual IP: {ha['error']}")
    elif ha:
        lines.append(f"  virtual IP {ha['vip']}, VRID {ha['vrid']}")
    daemon = state["daemon"]
    if not daemon["running"]:
        lines.append("  this gateway's server is not running")
    else:
        lines.append(f"  this gateway's server runs with {daemon['peers']} peer(s)")
        for line in (daemon.get("ha") or {}).get("lines", []):
            lines.append(f"  {line}")
    lines.append("gateways:")
    for g in state["gateways"]:
        role = "-"
        member = g.get("ha")
        if member and "error" in member:
            role = member["error"]
        elif member:
            role = (f"{(g['ha_state'] or 'not started').upper()} on {member['dev']}, priority {member['priority']}"
                    f"{'' if member['preempt'] else ', no preemption'}")
        beat = "no heartbeat" if g["last_heartbeat"] is None else f"heartbeat {ago(int(g['last_heartbeat']), now)}"
        name = g["name"] + (" (this)" if g["this"] else "")
        lines.append(f"  {name:<20} endpoint {g['endpoint'] or '-':<24} {role:<40} {beat}")
    return "\n".join(lines) + "\n"
