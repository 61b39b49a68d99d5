"""Per-client settings the policy gives: bandwidth limits (for the shaper) and DNS servers.

Rules kept here:
- an entry naming the client itself wins over its groups' entries;
- bandwidth from several groups: per direction the most generous limit
  among the groups that set one (being in one more group never costs
  bandwidth); a group without an entry sets nothing; None = unlimited;
- DNS from several groups: the union of their servers, in file order; a
  client none of whose groups has an entry gets None (= the gateway's
  pushed servers);
- this module only computes data: the shaper (tc) and the config writer
  are other modules' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .clients import ClientRef, Resolver
from .model import Bandwidth, Policy
from .targets import GROUP_PREFIX, IPAddress


@dataclass(frozen=True)
class ClientSettings:
    name: str
    bandwidth: Bandwidth | None  # None: no limit in either direction
    dns: tuple[IPAddress, ...] | None  # None: the gateway's pushed servers


def bandwidth_for(policy: Policy, resolver: Resolver, client: ClientRef) -> Bandwidth | None:
    if client.name in policy.bandwidth:
        return policy.bandwidth[client.name]
    down: int | None = None
    up: int | None = None
    found = None
    for key, bw in policy.bandwidth.items():
        if key.startswith(GROUP_PREFIX) and key[len(GROUP_PREFIX):] in resolver.groups_of(client):
            found = bw
            if bw.down is not None:
                down = bw.down if down is None else max(down, bw.down)
            if bw.up is not None:
                up = bw.up if up is None else max(up, bw.up)
    if found is None:
        return None
    # A direction some group limits and another leaves open stays limited:
    # "open" there only means that group did not say.
    return Bandwidth(down, up, found.line)


def dns_for(policy: Policy, resolver: Resolver, client: ClientRef) -> tuple[IPAddress, ...] | None:
    if client.name in policy.dns:
        return policy.dns[client.name].servers
    servers: list[IPAddress] = []
    found = False
    for key, d in policy.dns.items():
        if key.startswith(GROUP_PREFIX) and key[len(GROUP_PREFIX):] in resolver.groups_of(client):
            found = True
            servers.extend(s for s in d.servers if s not in servers)
    return tuple(servers) if found else None


def client_settings(policy: Policy, clients: Iterable[ClientRef]) -> dict[str, ClientSettings]:
    """{client name: its resolved bandwidth limits and DNS servers}."""
    resolver = Resolver(policy, clients)
    return {c.name: ClientSettings(c.name, bandwidth_for(policy, resolver, c), dns_for(policy, resolver, c))
            for c in resolver.clients}
