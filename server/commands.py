"""The `tunnel server` command group as the `tunnel` command mounts it (entry point tunnel.commands):
provisioning and running (server/cli_server.py), access control (server/access/cli.py) and the
virtual IP (server/ha/cli.py)."""

from server.access.cli import mount
from server.cli_server import server
from server.ha.cli import ha

mount(server)
server.add_command(ha)

__all__ = ["server"]
