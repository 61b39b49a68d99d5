"""The clients a policy is applied to, as plain data, and how the policy's names resolve against them.

Rules kept here:
- this package never reads the registry: the caller hands in `ClientRef`s
  (name, tunnel addresses, group names from the registry); a client's
  groups are the registry's plus those the file's `groups` section gives it;
- group names are bare ("work"); "group:work" is accepted and stripped;
- a name that resolves to no client (a deleted client, a typo, an empty
  group) resolves to nothing and is reported in `problems`: `check` turns
  those into errors, a running server applies the rest (it must not keep
  an old policy in force because one client was deleted).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from .model import GROUP_PREFIX_LEN, Policy, Source, Target
from .targets import GROUP_PREFIX, IPNetwork


_GROUP_SETS: dict[frozenset, frozenset] = {}
_GROUP_SETS_MAX = 4096


@dataclass(frozen=True)
class ClientRef:
    """One client as the registry knows it.

    addresses: its tunnel addresses ("10.8.0.2", "fd08::2", or with a prefix
    such as "10.8.0.2/32"; a shorter prefix is a subnet routed to it).
    admitted: False puts its addresses on the login-only target (sessions).
    """

    name: str
    addresses: tuple[str, ...] | list[str]
    groups: frozenset[str] = frozenset()
    admitted: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
        groups = frozenset(g[GROUP_PREFIX_LEN:] if g.startswith(GROUP_PREFIX) else g for g in self.groups)
        # Clients share a few sets of groups: one object each (an empty frozenset alone is 216 bytes).
        if len(_GROUP_SETS) >= _GROUP_SETS_MAX:
            _GROUP_SETS.clear()
        object.__setattr__(self, "groups", _GROUP_SETS.setdefault(groups, groups))

    @cached_property
    def networks(self) -> tuple[IPNetwork, ...]:
        """The addresses as networks; ValueError names the client and the bad address."""
        out = []
        for a in self.addresses:
            try:
                out.append(ipaddress.ip_network(a, strict=True))
            except ValueError as exc:
                raise ValueError(f"client {self.name!r}: bad address {a!r}: {exc}") from None
        return tuple(out)


@dataclass
class Resolver:
    """Names of one policy resolved against one list of clients."""

    policy: Policy
    clients: Iterable[ClientRef]
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clients = list(self.clients)
        self.by_name: dict[str, ClientRef] = {}
        for c in self.clients:
            if c.name in self.by_name:
                raise ValueError(f"client {c.name!r} given twice")
            self.by_name[c.name] = c
        file_groups: dict[str, set[str]] = {}
        for g in self.policy.groups.values():
            for member in g.members:
                file_groups.setdefault(member, set()).add(g.name)
        self._groups = {c.name: frozenset(c.groups | file_groups.get(c.name, set())) for c in self.clients}
        self._members: dict[str, list[ClientRef]] = {}
        for c in self.clients:
            for g in self._groups[c.name]:
                self._members.setdefault(g, []).append(c)
        self._reported: set[tuple[str, int]] = set()

    # -- membership -------------------------------------------------------

    def groups_of(self, client: ClientRef) -> frozenset[str]:
        return self._groups.get(client.name, client.groups)

    def members(self, group: str) -> list[ClientRef]:
        return self._members.get(group, [])

    def known_group(self, group: str) -> bool:
        return group in self._members or group in self.policy.groups

    def client(self, name: str) -> ClientRef | None:
        return self.by_name.get(name)

    def src_matches(self, src: Source, client: ClientRef) -> bool:
        if src.kind == "any":
            return True
        if src.kind == "group":
            return src.name in self.groups_of(client)
        return src.name == client.name

    def applicable_rules(self, client: ClientRef) -> tuple[int, ...]:
        """Indices of the rules whose src includes CLIENT."""
        return tuple(r.index for r in self.policy.rules if any(self.src_matches(s, client) for s in r.src))

    # -- addresses ----------------------------------------------------------

    def networks(self, target: Target) -> tuple[IPNetwork, ...]:
        """The networks a destination HOST stands for (clients: their tunnel addresses)."""
        if target.kind in ("any", "host", "net"):
            return target.networks
        if target.kind == "client":
            c = self.by_name.get(target.name)
            if c is None:
                self.report(target.line, f"{target.name!r} is neither a host nor a client")
                return ()
            return c.networks
        members = self.members(target.name)
        if not members:
            self.report(target.line, f"group:{target.name} has no clients")
        return tuple(n for c in members for n in c.networks)

    def check_names(self) -> None:
        """Add a problem for every name in the file that matches no client (for `check`)."""
        p = self.policy
        for g in p.groups.values():
            for member, line in zip(g.members, g.member_lines):
                if member not in self.by_name:
                    self.report(line, f"group:{g.name} member {member!r} is not a client")
        for name in p.hosts:
            if name in self.by_name:
                self.report(p.hosts[name].line, f"{name!r} is both a hosts name and a client; rename one")
        for rule in p.rules:
            for s in rule.src:
                self.check_source(s)
            for d in rule.dst:
                self.networks(d.target)
        for key, line in list(p.bandwidth_lines.items()) + [(k, d.line) for k, d in p.dns.items()]:
            if key.startswith(GROUP_PREFIX):
                if not self.known_group(key[GROUP_PREFIX_LEN:]):
                    self.report(line, f"{key} has no clients")
            elif key not in self.by_name:
                self.report(line, f"{key!r} is not a client")

    def check_source(self, s: Source) -> list[ClientRef]:
        if s.kind == "any":
            return list(self.clients)
        if s.kind == "group":
            members = self.members(s.name)
            if not members:
                self.report(s.line, f"group:{s.name} has no clients")
            return members
        c = self.by_name.get(s.name)
        if c is None:
            self.report(s.line, f"{s.name!r} is not a client")
            return []
        return [c]

    def report(self, line: int, message: str) -> None:
        if (message, line) not in self._reported:
            self._reported.add((message, line))
            self.problems.append(f"{self.policy.where(line)}: {message}")
