"""`tunnel login [IFACE]` and `tunnel logout [IFACE]`: parse, prompt, call client/login.py.

They join the `tunnel` command as "tunnel.commands" entry points (pyproject.toml).
"""

from __future__ import annotations

import os
import sys

import click

from tunnel import loginapi

DEFAULT_CONFIG_DIR = "/etc/wireguard"


def _fail(message: str) -> click.ClickException:
    from tunnel.cli import _Fail

    return _Fail(message)


def _server(iface: str, config: str | None, server: str | None) -> str:
    from tunnel.config import ConfigError, load_config

    from .login import LoginError, server_address

    if server:
        return server
    path = config or os.path.join(DEFAULT_CONFIG_DIR, f"{iface}.conf")
    try:
        return server_address(load_config(path))
    except ConfigError as exc:
        raise _fail(f"{exc} (or give --server ADDR)") from None
    except LoginError as exc:
        raise _fail(str(exc)) from None


def _ask(prompt: str, secret: bool) -> str:
    if not sys.stdin.isatty():
        # Scripts: one answer per line on standard input, no echo to suppress.
        line = sys.stdin.readline()
        if not line:
            raise _fail(f"standard input ended before the {prompt.lower()}")
        return line.rstrip("\r\n")
    return click.prompt(prompt, hide_input=secret)


_COMMON = [
    click.argument("iface", required=False, default="wg0"),
    click.option("--config", default=None, metavar="FILE", help="The interface's wg-quick file "
                 "(default /etc/wireguard/IFACE.conf)."),
    click.option("--server", default=None, metavar="ADDR", help="The server's tunnel address."),
    click.option("--port", default=loginapi.DEFAULT_PORT, show_default=True, help="The login endpoint's port."),
]


def _common(f):
    for decorator in reversed(_COMMON):
        f = decorator(f)
    return f


@click.command("login")
@_common
@click.option("-u", "--user", default=None, help="The user name (asked if not given).")
def login_command(iface, config, server, port, user) -> None:
    """Log in to the server through the tunnel: prints the session's groups and expiry."""
    from .login import LoginError, describe, interactive_login

    address = _server(iface, config, server)
    try:
        session = interactive_login(address, _ask, click.echo, port=port, user=user)
    except LoginError as exc:
        raise _fail(str(exc)) from None
    click.echo(describe(session))


@click.command("logout")
@_common
def logout_command(iface, config, server, port) -> None:
    """End this machine's login session."""
    from .login import LoginError, logout

    address = _server(iface, config, server)
    try:
        ended = logout(address, port)
    except LoginError as exc:
        raise _fail(str(exc)) from None
    click.echo("logged out" if ended else "not logged in")
