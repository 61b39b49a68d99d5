"""What the policy needs to know about the gateway itself (not in the policy file).

Rules kept here:
- the gateway's pushed DNS servers are reachable on port 53 by every client
  whose groups have no `dns` servers of their own, whatever the rules say
  (clients were told to use them); clients with `dns` servers reach port 53
  only on those;
- local services (tcp/PORT, udp/PORT; the login endpoint, later) are
  reachable on the gateway's tunnel addresses by every address that
  arrives through the tunnel, known client or not, logged in or not;
- everything else on the gateway is a destination like any other: `*` and
  any CIDR containing its addresses match it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .targets import IPAddress, Service


@dataclass(frozen=True)
class GatewayContext:
    addresses: tuple[IPAddress, ...] = ()
    dns_servers: tuple[IPAddress, ...] = ()
    local_services: tuple[Service, ...] = ()

    @classmethod
    def make(cls, addresses: Iterable[str] = (), dns_servers: Iterable[str] = (),
             local_services: Iterable[str | Service] = ()) -> "GatewayContext":
        """From strings: addresses may carry a prefix ("10.8.0.1/24"); services are "tcp/8443"."""
        addrs = tuple(ipaddress.ip_interface(a).ip for a in addresses)
        dns = tuple(ipaddress.ip_address(a) for a in dns_servers)
        services = tuple(s if isinstance(s, Service) else Service.parse(s) for s in local_services)
        return cls(addrs, dns, services)

    def is_local_service(self, addr: IPAddress, proto: str, port: int | None) -> bool:
        return addr in self.addresses and any(s.proto == proto and s.port == port for s in self.local_services)
