"""Why a packet was accepted or denied: one spelling, used by decide(), the nft compiler, counters and logs.

The deny reasons double as the names of the kernel's counting sets
(`deny_<reason>4`, `deny_<reason>6`), of the chains that drop, and as the
NFLOG prefixes, so a logged or counted drop and an `explain` answer say
the same word.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    # accepted
    RULE = "rule"                    # an acls entry
    LOCAL_SERVICE = "local-service"  # a service of the gateway (login endpoint)
    GATEWAY_DNS = "gateway-dns"      # port 53 on a pushed DNS server
    GROUP_DNS = "group-dns"          # port 53 on the client's own `dns` servers
    # denied
    DEFAULT = "default"              # no rule accepts it
    DNS = "dns"                      # port 53 elsewhere than the client's `dns` servers
    INBOUND = "inbound"              # a new connection toward a client from outside the tunnel
    UNKNOWN = "unknown"              # a source address that is no client's
    LOGIN = "login"                  # a client that is not logged in
    MULTICAST = "multicast"          # multicast or broadcast from a client: dropped, not counted or logged

    @property
    def accepts(self) -> bool:
        return self in _ACCEPTING

    @property
    def counter(self) -> str:
        return "deny_" + self.value

    def explain(self) -> str:
        return _TEXT[self]


_ACCEPTING = frozenset({Reason.RULE, Reason.LOCAL_SERVICE, Reason.GATEWAY_DNS, Reason.GROUP_DNS})
# The reasons the kernel counts and logs (each has a counter deny_<reason> and a deny_<reason> chain).
DENY_REASONS = tuple(r for r in Reason if not r.accepts and r is not Reason.MULTICAST)

_TEXT = {
    Reason.RULE: "accepted by a rule",
    Reason.LOCAL_SERVICE: "a local service of the gateway, open to every client",
    Reason.GATEWAY_DNS: "DNS to the gateway's pushed DNS server",
    Reason.GROUP_DNS: "DNS to a server the policy's dns section gives this client",
    Reason.DEFAULT: "default deny: no rule accepts it",
    Reason.DNS: "DNS only to the servers the policy's dns section gives this client",
    Reason.INBOUND: "new connections toward clients from outside the tunnel are denied",
    Reason.UNKNOWN: "the source address is no client's",
    Reason.LOGIN: "the client is not logged in",
    Reason.MULTICAST: "multicast and broadcast from clients are dropped",
}
