"""The client role: whole-machine routing for a full-tunnel config, plugged into `tunnel up`.

Applied by itself, as wg-quick decides: when a peer's AllowedIPs hold
0.0.0.0/0 or ::/0 and Table is auto (client/fulltunnel.py does the rest).
Declared in pyproject.toml under the "tunnel.roles" entry points.
"""

from __future__ import annotations

from tunnel.role import Role

from . import fulltunnel


class ClientRole(Role):
    name = "client"

    @classmethod
    def for_interface(cls, interface) -> "ClientRole | None":
        if any(interface.full_tunnel) and interface.table == "auto":
            return cls()
        return None

    def setup(self, interface) -> None:
        fulltunnel.apply(interface)
