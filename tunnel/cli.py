"""The `tunnel` command. Each subcommand parses its arguments and calls the library."""

from __future__ import annotations

import logging
import sys

import click

from . import __version__


class _Fail(click.ClickException):
    """An error for the user: printed as 'tunnel: message', exit status 1, no traceback."""

    def show(self, file=None) -> None:
        click.echo(f"tunnel: {self.format_message()}", err=True)


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    if verbose > 0:  # ours only: pyroute2's debug output is a flood
        logging.getLogger("tunnel").setLevel(logging.DEBUG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunnel")
def main() -> None:
    """A WireGuard-compatible VPN in Python."""


# --- keys ---------------------------------------------------------------------


@main.command()
def genkey() -> None:
    """Print a new private key (as `wg genkey`)."""
    from .keys import generate_private_key

    click.echo(generate_private_key())


@main.command()
def pubkey() -> None:
    """Read a private key on stdin, print its public key (as `wg pubkey`)."""
    from .keys import public_key_of
    from .protocol.crypto import KeyError_

    text = sys.stdin.read()
    try:
        click.echo(public_key_of(text))
    except KeyError_ as exc:
        raise _Fail(f"the private key on stdin is not valid: {exc}") from None


@main.command()
def genpsk() -> None:
    """Print a new pre-shared key (as `wg genpsk`)."""
    from .keys import generate_preshared_key

    click.echo(generate_preshared_key())


# --- interfaces ---------------------------------------------------------------


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--no-offload", is_flag=True, help="Plain TUN I/O without the vnet header (slower; for debugging).")
@click.option("--killswitch/--no-killswitch", default=None, help="Override KillSwitch= for full-tunnel configs.")
@click.option("-v", "--verbose", count=True)
def up(config: str, no_offload: bool, killswitch: bool | None, verbose: int) -> None:
    """Run the interface CONFIG (a wg-quick file) in the foreground until SIGINT/SIGTERM."""
    _setup_logging(verbose)
    from .runner import run_up

    failure = run_up(config, vnet_hdr=not no_offload, killswitch=killswitch)
    if failure:
        raise _Fail(failure)


@main.command()
@click.argument("target")
@click.option("-v", "--verbose", count=True)
def down(target: str, verbose: int) -> None:
    """Undo what a stopped or crashed `up` of TARGET (config file or interface name) left."""
    _setup_logging(verbose)
    from .runner import run_down

    failure = run_down(target)
    if failure:
        raise _Fail(failure)


@main.command()
@click.argument("iface", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(iface: str | None, as_json: bool) -> None:
    """Peers, endpoints, handshakes and counters of running interfaces (all, or IFACE)."""
    import json
    import time

    from server.control import ControlError
    from .show import interfaces, render, status

    names = [iface] if iface else interfaces()
    states = []
    for name in names:
        try:
            states.append(status(name))
        except ControlError as exc:
            if iface:
                raise _Fail(str(exc)) from None
    if as_json:
        click.echo(json.dumps(states if not iface else states[0], indent=2))
    else:
        click.echo("\n".join(render(s, time.time()) for s in states), nl=False)


def _server_group():
    from server.cli_server import server

    return server


main.add_command(_server_group(), "server")


# --- demonstration and measurement -----------------------------------------------


@main.command()
@click.option("--seconds", default=3, show_default=True, help="Length of the throughput run.")
@click.option("-v", "--verbose", count=True)
def demo(seconds: int, verbose: int) -> None:
    """Build two namespaces, bring a real tunnel up between them with our code, ping and measure."""
    _setup_logging(verbose)
    from .demo import run_demo

    failure = run_demo(seconds=seconds, echo=click.echo)
    if failure:
        raise _Fail(failure)


@main.command()
@click.option("--seconds", default=10, show_default=True, help="Length of each iperf3 run.")
@click.option("--peers", default="tunnel,wireguard-go", show_default=True,
              help="Comma list of tunnels to measure: tunnel, tunnel-nooffload, wireguard-go.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON as well.")
def bench(seconds: int, peers: str, as_json: bool) -> None:
    """Measure throughput, RTT and CPU per GB through our tunnel and wireguard-go, in one run."""
    _setup_logging(0)
    from .bench import run_bench

    failure = run_bench(seconds=seconds, kinds=[p.strip() for p in peers.split(",") if p.strip()],
                        as_json=as_json, echo=click.echo)
    if failure:
        raise _Fail(failure)


if __name__ == "__main__":  # pragma: no cover
    main()
