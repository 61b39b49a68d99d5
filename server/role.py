"""The server role: what `tunnel server up` adds to its interface.

- setup: forwarding and NAT for the client pools (server/gateway.py), each
  change journalled with its undo;
- services: the reconciler that keeps the running peers in step with the
  registry (server/reconcile.py), and the access control that keeps the
  policy, bandwidth limits and login sessions in step with it
  (server/access/), closed before the interface goes down;
- when this gateway serves a virtual IP, the HA service (server/ha): keepalived beside the
  daemon, its state changes, the handshakes on becoming master; started last (the VIP is taken
  only once everything else serves) and closed first (it is released before anything goes);
- endpoint store: the registry's peer_endpoints table (server/endpointstore.py)
  keeps each client's last endpoint, so a restarted server resumes the
  clients it had (tunnel/resume.py).

Handed in by server/daemon.py `run_server`, never chosen from a config: a
wg-quick file does not say "server".
"""

from __future__ import annotations

from typing import Any

from tunnel.role import Role

from .gateway import apply_gateway


class ServerRole(Role):
    name = "server"

    def __init__(self, settings: Any, reconciler: Any, access: Any = None, endpoints: Any = None, ha: Any = None):
        self.settings = settings  # server.registry.ServerSettings: pools, nat, client_to_client
        self.reconciler = reconciler  # server.reconcile.Reconciler
        self.access = access  # server.access.control.AccessControl
        self.endpoints = endpoints  # server.endpointstore.RegistryEndpointStore
        self.ha = ha  # server.ha.service.HaService

    def setup(self, interface) -> None:
        s = self.settings
        apply_gateway(interface.journal, interface.name, list(s.pools), masquerade=s.nat,
                      allow_client_to_client=s.client_to_client)

    def services(self, interface) -> list:
        started = [self.reconciler.start(interface)]
        if self.access is not None:
            started.append(self.access.start(interface))
        if self.ha is not None:
            started.append(self.ha.start(interface))
        return started

    def endpoint_store(self, interface):
        return self.endpoints
