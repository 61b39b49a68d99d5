"""The `tunnel server` command group as the `tunnel` command mounts it (entry point tunnel.commands):
provisioning and running (server/cli_server.py) plus access control (server/access/cli.py)."""

from server.access.cli import mount
from server.cli_server import server

mount(server)

__all__ = ["server"]
