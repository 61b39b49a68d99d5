"""The `tunnel` command. Each subcommand parses its arguments and calls the library.

The shared library's own commands are here (keys, up, down, show). The
packages that use it hand in theirs (`tunnel server ...` from server/,
`tunnel demo` and `tunnel bench` from tunnel_lab/) as "tunnel.commands" entry
points (tunnel/role.py), loaded when a name is not one of ours or when help
lists them, so that this module names none of them.

Rule kept here: a command costs only what it uses. `up` and `down` import the
interface machinery (numpy, pyroute2: a third of a second) when they run, so
that `tunnel genkey`, `tunnel show` and `tunnel --help` start at once.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from . import __version__, role
from .control import ControlError
from .keys import generate_preshared_key, generate_private_key, public_key_of
from .protocol.crypto import KeyError_
from .show import interfaces, render, status


class Fail(click.ClickException):
    """An error for the user: printed as 'tunnel: message', exit status 1, no traceback."""

    def show(self, file=None) -> None:
        click.echo(f"tunnel: {self.format_message()}", err=True)


def setup_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if verbose > 0:  # ours only: pyroute2's debug output is a flood
        logging.getLogger("tunnel").setLevel(logging.DEBUG)


# The names the roles' command modules have used since before they were public.
_Fail = Fail
_setup_logging = setup_logging


class _Tunnel(click.Group):
    """Our commands, then those handed in as "tunnel.commands" entry points (each loaded when named)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {ep.name for ep in role.command_entry_points()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        for ep in role.command_entry_points():
            if ep.name == name:
                try:
                    return role.load_command(ep)
                except role.RoleError as exc:  # the rest of the command still works
                    click.echo(f"tunnel: warning: {exc}", err=True)
        return None


@click.group(cls=_Tunnel, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunnel")
def main() -> None:
    """A WireGuard-compatible VPN in Python."""


# --- keys ---------------------------------------------------------------------


@main.command()
def genkey() -> None:
    """Print a new private key (as `wg genkey`)."""
    click.echo(generate_private_key())


@main.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key (as `wg pubkey`)."""
    text = sys.stdin.read()
    try:
        click.echo(public_key_of(text))
    except KeyError_ as exc:
        raise Fail(f"the private key on stdin is not valid: {exc}") from None


@main.command()
def genpsk() -> None:
    """Print a new pre-shared key (as `wg genpsk`)."""
    click.echo(generate_preshared_key())


# --- interfaces ---------------------------------------------------------------


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--no-offload", is_flag=True, help="Plain TUN I/O without the vnet header (slower; for debugging).")
@click.option("--killswitch/--no-killswitch", default=None, help="Override KillSwitch= for full-tunnel configs.")
@click.option("-v", "--verbose", count=True)
def up(config: str, no_offload: bool, killswitch: bool | None, verbose: int) -> None:
    """Run the interface CONFIG (a wg-quick file) in the foreground until SIGINT/SIGTERM."""
    setup_logging(verbose)
    from .runner import run_up  # the interface machinery: only when an interface runs

    failure = run_up(config, vnet_hdr=not no_offload, killswitch=killswitch)
    if failure:
        raise Fail(failure)


@main.command()
@click.argument("target")
@click.option("-v", "--verbose", count=True)
def down(target: str, verbose: int) -> None:
    """Undo what a stopped or crashed `up` of TARGET (config file or interface name) left."""
    setup_logging(verbose)
    from .runner import run_down  # the undoers' modules: only when something is undone

    failure = run_down(target)
    if failure:
        raise Fail(failure)


@main.command()
@click.argument("iface", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(iface: str | None, as_json: bool) -> None:
    """Peers, endpoints, handshakes and counters of running interfaces (all, or IFACE)."""
    names = [iface] if iface else interfaces()
    states = []
    refused = None
    for name in names:
        try:
            states.append(status(name))
        except ControlError as exc:
            if iface:
                raise Fail(str(exc)) from None
            refused = refused or exc
    if refused is not None and not states:  # e.g. not root: the sockets are root's
        raise Fail(str(refused))
    if as_json:
        click.echo(json.dumps(states if not iface else states[0], indent=2))
    else:
        click.echo("\n".join(render(s, time.time()) for s in states), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
