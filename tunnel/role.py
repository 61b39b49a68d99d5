"""Roles, and commands: what the users of the shared library plug into it.

wg-quick runs the same interface for a laptop and for a gateway; what differs
is what is added around it. A role hands its additions in; this library never
reaches for them (wireguard-go's device/ knows nothing of wg-quick):
- `setup(interface)`: OS changes made once the interface has its addresses
  and AllowedIPs routes, before the data plane starts. Each goes through the
  interface's journal, with undo kinds registered by the module that makes
  the change (`@undoer` in tunnel/undo.py);
- `services(interface)`: things that run beside the data plane (each with a
  `close()`), started after the library's own (control socket, metrics, drop
  summary) and closed before them;
- `endpoint_store(interface)`: where the peers' last endpoints are kept for
  resuming sessions after a restart (tunnel/resume.py); the first role that
  hands one in is used, else the interface's own file (`tunnel server up`
  hands in the registry's table).
A role class may apply itself to an interface whose config asks for it
(`for_interface` returns an instance, as wg-quick turns on policy routing
for a /0 in AllowedIPs: the client's); other roles are handed in by whoever
runs the interface (`tunnel server up` hands in the gateway's setup).

Both are found through entry points that the packages providing them declare
(pyproject.toml), so that no module here names client/, server/ or the lab:

    [project.entry-points."tunnel.roles"]        a Role class
    client = "client.role:ClientRole"
    [project.entry-points."tunnel.commands"]     a click command of `tunnel`
    server = "server.cli_server:server"

Commands are an entry point of their own, loaded one by one: `tunnel server
list` imports the server's command module and nothing of an interface's
machinery, and `tunnel genkey` loads no plug-in at all.

Rules kept here:
- nothing is imported until asked;
- a role that cannot be loaded is an error for whoever needs it (an interface
  does not come up without the roles that might apply to it); the command
  line only warns about a command it cannot load, and the rest still works;
- the packages that declare roles or commands, and tunnel itself, are the
  only ones whose modules a journal may name for import (see `packages`).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Callable, ClassVar, Iterable

GROUP = "tunnel.roles"
COMMANDS = "tunnel.commands"


class RoleError(RuntimeError):
    """A declared role could not be loaded; the message names it and why."""


class Role:
    """The base of every role; each hook does nothing unless overridden."""

    name: ClassVar[str] = ""

    @classmethod
    def for_interface(cls, interface: Any) -> "Role | None":
        """An instance if this role applies by itself to INTERFACE (its config decides), else None.

        Called during bring-up once `interface.full_tunnel`, `interface.table`
        and `interface.fwmark` are known and the TUN device and UDP socket exist.
        """
        return None

    def setup(self, interface: Any) -> None:
        """Change the OS for INTERFACE, every change recorded in `interface.journal` before it is made."""

    def services(self, interface: Any) -> list:
        """Started services (objects with `close()`) for a brought-up INTERFACE."""
        return []

    def endpoint_store(self, interface: Any) -> Any:
        """A tunnel.endpointstore.EndpointStore for INTERFACE, or None to leave it to others."""
        return None


class SetupSteps(Role):
    """Setup steps handed in as plain functions of the interface (Options.extra_setup)."""

    name = "setup steps"

    def __init__(self, steps: Iterable[Callable[[Any], None]]):
        self.steps = list(steps)

    def setup(self, interface: Any) -> None:
        for step in self.steps:
            step(interface)


def entry_points() -> list[importlib.metadata.EntryPoint]:
    """The declared roles, in name order (the order their setup runs in)."""
    return sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def load(ep: importlib.metadata.EntryPoint) -> type[Role]:
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plug-in: its import error, in one line
        raise RoleError(f"role {ep.name!r} ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise RoleError(f"role {ep.name!r} ({ep.value}) is not a tunnel.role.Role")
    return cls


def role_classes() -> list[type[Role]]:
    """Every declared role, loaded; raises RoleError for the first that cannot be."""
    return [load(ep) for ep in entry_points()]


def command_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The declared commands of `tunnel`, each named as on the command line."""
    return sorted(importlib.metadata.entry_points(group=COMMANDS), key=lambda ep: ep.name)


def load_command(ep: importlib.metadata.EntryPoint) -> Any:
    """The click command EP names; RoleError if it cannot be loaded."""
    try:
        return ep.load()
    except Exception as exc:  # a broken plug-in: its import error, in one line
        raise RoleError(f"command {ep.name!r} ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}") from None


def packages() -> set[str]:
    """Top-level packages allowed to register undo kinds: tunnel and those that plug into it."""
    declared = entry_points() + command_entry_points()
    return {__name__.partition(".")[0]} | {ep.module.partition(".")[0] for ep in declared}
