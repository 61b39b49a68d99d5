"""The client's whole-machine routing, composed from its parts.

Applied by the client role (client/role.py) when a peer's AllowedIPs hold
0.0.0.0/0 or ::/0 and Table is auto (wg-quick's rule). Order matters for
"no leak":
    kill switch first (everything not through the tunnel or our marked UDP drops),
    then DNS (so no query goes to the old resolver once routing flips),
    then policy routing, whose default route into the tunnel goes in last.
Each part records its undo in the interface's journal before changing anything.
"""

from __future__ import annotations

import logging

from . import dns, killswitch, routing

log = logging.getLogger("tunnel")


def killswitch_wanted(interface) -> bool:
    """On by default for full-tunnel configs; `KillSwitch = off` in [Interface] or the option turns it off."""
    if interface.options.killswitch is not None:
        return interface.options.killswitch
    value = interface.config.interface.extension("KillSwitch")
    if value is None:
        return True
    return value.strip().lower() not in ("off", "false", "no", "0")


def apply(interface) -> None:
    cfg = interface.config.interface
    ifname = interface.name
    journal = interface.journal
    v4, v6 = interface.full_tunnel
    families = {f for f, on in ((4, v4), (6, v6)) if on}
    fwmark = interface.fwmark
    # Whole socket addresses: a link-local endpoint keeps its scope (the rule names its interface).
    endpoints = {tuple(p.endpoint) for p in interface.device.peers.values() if p.endpoint}
    failover = getattr(interface, "failover", None)
    if failover is not None:  # every endpoint a peer may move to, so a switch needs no change here
        endpoints |= {tuple(a) for a in failover.addresses()}
    endpoints = sorted(endpoints)
    if killswitch_wanted(interface):
        killswitch.apply_killswitch(journal, ifname, fwmark, endpoints)
        log.info("%s: kill switch on", ifname)
    if cfg.dns or cfg.dns_search:
        dns.apply_dns(
            journal, ifname, [str(a) for a in cfg.dns], list(cfg.dns_search),
            resolv_conf=interface.options.resolv_conf, use_resolved=interface.options.use_resolved,
        )
        log.info("%s: DNS through the tunnel", ifname)
    routing.apply_full_tunnel(
        journal, ifname, fwmark=fwmark, families=families, block_others=True,
        addresses=[str(a) for a in cfg.addresses],
    )
    routing.apply_mss_clamp(journal, ifname)
    log.info("%s: all IPv%s traffic goes through the tunnel", ifname, "/".join(str(f) for f in sorted(families)))
