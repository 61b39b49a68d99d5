"""The `tunnel-wg` command: wireguard-go's command line, for tools that start a userspace WireGuard.

    tunnel-wg [-f|--foreground] IFACE

Environment, as wireguard-go reads it: WG_PROCESS_FOREGROUND=1 is -f;
LOG_LEVEL=verbose|error|silent (default error). In the background, stdout
and stderr go to /dev/null unless LOG_LEVEL is set (and not silent), as
wireguard-go does; a failure to start is always one line on stderr and a
non-zero exit status. This module only parses and calls tunnel.dropin.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from . import __version__

PROG = "tunnel-wg"
_LEVELS = {"verbose": logging.DEBUG, "debug": logging.DEBUG, "error": logging.ERROR,
           "silent": logging.CRITICAL + 1}


def _log_level() -> tuple[int, bool]:
    """(logging level, whether LOG_LEVEL asked for output) from the environment."""
    text = os.environ.get("LOG_LEVEL", "").strip().lower()
    level = _LEVELS.get(text, logging.ERROR)
    return level, bool(text) and level <= logging.ERROR


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (also WG_PROCESS_FOREGROUND=1).")
@click.version_option(__version__, prog_name=PROG)
@click.argument("interface")
def main(foreground: bool, interface: str) -> None:
    """Create the WireGuard interface INTERFACE (a TUN link) with no configuration and serve it.

    Configure it from outside, as with wireguard-go: `wg setconf/set` over
    /var/run/wireguard/INTERFACE.sock, `ip` for addresses, MTU and routes.
    It ends when the interface is deleted (`ip link del`, `wg-quick down`)
    or on SIGTERM/SIGINT. With wg-quick:
    WG_QUICK_USERSPACE_IMPLEMENTATION=tunnel-wg wg-quick up wg0
    """
    foreground = foreground or os.environ.get("WG_PROCESS_FOREGROUND", "") == "1"
    level, asked = _log_level()
    logging.basicConfig(level=level, stream=sys.stderr, format=f"{PROG}: %(name)s: %(message)s")
    logging.getLogger("tunnel").setLevel(level)
    # Imported after the arguments are known: `--help` and `--version` start at once.
    from .dropin import DropInError, create, detach

    try:
        served = create(interface)
    except DropInError as exc:
        click.echo(f"{PROG}: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # anything the checks above did not foresee, still in one line
        click.echo(f"{PROG}: {interface}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    if not foreground:
        detach(keep_output=asked)
    served.serve()


if __name__ == "__main__":  # pragma: no cover - python -m tunnel.dropin_cli
    main()
