"""wg-quick files made from the registry: the server's IFACE.conf and each client's config.

Rules kept here: pure (registry values and `now` in, text out); what is
written parses back with tunnel/config.py (callers check client files
before handing them out); the server file lists only clients active at
`now` (not disabled, not expired), so a `wg-quick up` of it agrees with
what the daemon serves. Its [Peer] sections are written as text straight
from the registry's values, in tunnel/config's format (PeerConfig objects,
with their address objects, cost ~0.1 ms a client: a second for 10,000 on
every change).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from server.ha.settings import HaError, plan_for, shared_from
from server.layout import Local, header_lines
from server.policy import ClientRef, PolicyError, client_settings, load_policy
from server.registry import Client, Gateway, ServerSettings, Snapshot, split_endpoint
from tunnel.config import Config, InterfaceConfig, PeerConfig
from tunnel.protocol.crypto import DH_PUBKEY, decode_key, encode_key


class RenderError(RuntimeError):
    pass


def server_config(snap: Snapshot, local: Local, now: float) -> str:
    s = snap.settings
    iface = InterfaceConfig(private_key=decode_key(s.private_key), listen_port=s.listen_port,
                            addresses=[ipaddress.ip_interface(a) for a in s.server_addresses()])
    gateway = next((g for g in snap.gateways if g.name == local.gateway), None)
    metrics = gateway.options.get("metrics") if gateway else None
    if metrics:
        iface.extensions["MetricsAddress"] = [metrics]
    vip = _member_vip(snap, local.gateway)
    if vip is not None:
        # Only the holder of the VIP gets clients' datagrams, and every reply must leave from it.
        iface.extensions["ListenAddress"] = [str(vip)]
    body = Config(interface=iface).to_text()
    peers = "".join(_peer_text(c) for c in snap.active_clients(now))
    return "\n".join(header_lines(local, snap.revision)) + "\n" + body + peers


def _peer_text(c: Client) -> str:
    """server_peer(c) as write_config writes it: names are plain (check_name), keys re-encoded canonically."""
    lines = ["", "[Peer]", f"# Name = {c.name}", f"PublicKey = {encode_key(decode_key(c.public_key))}"]
    if c.preshared_key:
        lines.append(f"PresharedKey = {encode_key(decode_key(c.preshared_key))}")
    if c.addresses:
        lines.append("AllowedIPs = " + ", ".join(c.addresses))
    return "\n".join(lines) + "\n"


def server_peer(c: Client) -> PeerConfig:
    """A client as the server's [Peer]: its key, PSK and host addresses."""
    return PeerConfig(public_key=decode_key(c.public_key),
                      preshared_key=decode_key(c.preshared_key) if c.preshared_key else None,
                      allowed_ips=[ipaddress.ip_interface(a) for a in c.addresses], name=c.name)


def _member_vip(snap: Snapshot, gateway: str):
    """The VIP this gateway serves (HA on and it is a member), or None; a setting that cannot be read
    is none (the daemon refuses to start on it with its own message)."""
    try:
        plan = plan_for(snap.settings.extra, snap.gateways, gateway)
    except HaError:
        return None
    return plan.shared.vip.ip if plan is not None else None


def client_endpoints(settings: ServerSettings, gateways: Iterable[Gateway] = ()) -> list[tuple[str, int]]:
    """Where a client dials: the server's endpoint, then each gateway's own (by name), without repeats;
    with a virtual IP (`tunnel server ha`), the VIP alone: only its holder receives client traffic.

    A gateway's endpoint is HOST, HOST:PORT or [V6]:PORT as `init --endpoint`
    / `join --endpoint` stored it; without a port it is the server's. One
    that cannot be read is left out (a client file must always load).
    """
    try:
        shared = shared_from(settings.extra)
    except HaError:
        shared = None
    if shared is not None:
        return [(str(shared.vip.ip), settings.port)]
    out = [(settings.endpoint, settings.port)]
    for g in sorted(gateways, key=lambda g: g.name):
        endpoint = _host_port(g.endpoint or "", settings.port)
        if endpoint is not None and endpoint not in out:
            out.append(endpoint)
    return out


def _host_port(text: str, default_port: int) -> tuple[str, int] | None:
    try:
        host, port = split_endpoint(text)
    except ValueError:
        return None
    return host, port or default_port


def client_config(settings: ServerSettings, c: Client, policy_text: str | None = None,
                  gateways: Iterable[Gateway] = ()) -> str:
    """The client's own wg-quick file (what add-client and show-client print); DNS is its groups'
    servers when the access policy (POLICY_TEXT) gives them some, else the server's pushed ones.

    With more than one gateway to dial, the others follow its Endpoint in a
    `# FailoverEndpoints =` comment: our client fails over between them,
    wg-quick and the official apps use the Endpoint alone.
    """
    if not c.private_key:
        raise RenderError(f"client {c.name!r} brought its own key: the server has no config with its private key")
    dns = group_dns(policy_text, c) or [ipaddress.ip_address(d) for d in settings.dns]
    iface = InterfaceConfig(private_key=decode_key(c.private_key),
                            addresses=[ipaddress.ip_interface(a) for a in c.addresses], dns=dns)
    split = c.options.get("split")
    first, *others = client_endpoints(settings, gateways)
    server = PeerConfig(
        public_key=DH_PUBKEY(decode_key(settings.private_key)),
        preshared_key=decode_key(c.preshared_key) if c.preshared_key else None,
        allowed_ips=[ipaddress.ip_interface(n) for n in settings.client_allowed_ips(split)],
        endpoint=first,
        failover_endpoints=others,
        persistent_keepalive=settings.keepalive or None,
    )
    return Config(interface=iface, peers=[server]).to_text()


def group_dns(policy_text: str | None, c: Client) -> list | None:
    """The DNS servers the policy gives C's groups (None: none given, or no policy to read)."""
    if not policy_text:
        return None
    try:
        policy = load_policy(policy_text, "policy")
        ref = ClientRef(c.name, c.addresses, frozenset(c.groups))
        mine = client_settings(policy, [ref]).get(c.name)
    except (PolicyError, ValueError):
        return None
    return list(mine.dns) if mine is not None and mine.dns else None
