"""`tunnel server ...`: each command parses its arguments and calls server/provision.py.

From nothing to a connected client:
    tunnel server init --endpoint vpn.example.com
    tunnel server up            (or: systemctl enable --now tunnel-server@wg0)
    tunnel server add-client alice      (prints alice's config and a QR code)
"""

from __future__ import annotations

import json
import time

import click

_DIR = click.option("--dir", "directory", default=None, metavar="DIR",
                    help="Where the server's files live (default /etc/wireguard).")
_IFACE = click.option("-i", "--interface", "ifname", default=None, metavar="IFACE",
                      help="The server interface (default wg0).")


def _fail(message: str) -> click.ClickException:
    from tunnel.cli import _Fail

    return _Fail(message)


@click.group()
def server() -> None:
    """Run a WireGuard server and manage its clients."""


@server.command()
@click.option("--endpoint", required=True, metavar="HOST[:PORT]",
              help="The public name or address clients dial (and its port, if not the listen port).")
@click.option("--port", default=51820, show_default=True, help="UDP listen port.")
@click.option("--pool", "pools", multiple=True, metavar="CIDR",
              help="Client address pool; once for IPv4 and once for IPv6 (default 10.8.0.0/24 and a random ULA /64).")
@click.option("--dns", multiple=True, metavar="IP", help="DNS server handed to clients (repeatable).")
@click.option("--site", "sites", multiple=True, metavar="CIDR",
              help="A subnet behind the server that clients may reach (repeatable).")
@click.option("--nat/--no-nat", default=True, show_default=True, help="Masquerade clients leaving the server.")
@click.option("--client-to-client/--no-client-to-client", default=False, show_default=True,
              help="Let clients reach each other.")
@click.option("--split/--full", "split", default=False, show_default=True,
              help="Clients route only pools and sites (--split) or everything (--full).")
@click.option("--keepalive", default=25, show_default=True, help="Clients' PersistentKeepalive (0: off).")
@click.option("--metrics", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics there.")
@click.option("--force", is_flag=True, help="Replace an existing server (its clients are forgotten).")
@_DIR
@_IFACE
def init(endpoint, port, pools, dns, sites, nat, client_to_client, split, keepalive, metrics, force,
         directory, ifname) -> None:
    """Create the server's keys and configuration."""
    from server.provision import ProvisionError, init_server

    try:
        p = init_server(directory, ifname, endpoint, port=port, pools=list(pools) or None, dns=list(dns),
                        sites=list(sites), nat=nat, client_to_client=client_to_client, full_tunnel=not split,
                        keepalive=keepalive, metrics=metrics, force=force)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    click.echo(f"created {p.conf} and {p.settings}")
    click.echo(f"next: `tunnel server up{'' if p.ifname == 'wg0' else ' -i ' + p.ifname}` "
               f"(or systemctl enable --now tunnel-server@{p.ifname}), then `tunnel server add-client NAME`")


@server.command()
@click.option("-v", "--verbose", count=True)
@click.option("--no-offload", is_flag=True, help="Plain TUN I/O without the vnet header.")
@_DIR
@_IFACE
def up(verbose, no_offload, directory, ifname) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM (NAT and forwarding included)."""
    from tunnel.cli import _setup_logging

    _setup_logging(verbose)
    from server.provision import run_server

    failure = run_server(directory, ifname, vnet_hdr=not no_offload)
    if failure:
        raise _fail(failure)


def _show_qr(text: str, png: str | None, svg: str | None, qr: bool, invert: bool) -> None:
    from server import qr as qrcode

    if qr:
        click.echo(qrcode.terminal(text, invert=invert), nl=False)
    if png:
        qrcode.write_png(text, png)
        click.echo(f"QR code written to {png}", err=True)
    if svg:
        qrcode.write_svg(text, svg)
        click.echo(f"QR code written to {svg}", err=True)


_QR_OPTIONS = [
    click.option("--png", default=None, metavar="FILE", help="Also write the QR code as PNG (0600: it holds a key)."),
    click.option("--svg", default=None, metavar="FILE", help="Also write the QR code as SVG (0600)."),
    click.option("--qr/--no-qr", default=True, show_default=True, help="Print the QR code in the terminal."),
    click.option("--invert", is_flag=True, help="QR code for a light-background terminal."),
]


def _qr_options(f):
    for option in reversed(_QR_OPTIONS):
        f = option(f)
    return f


@server.command("add-client")
@click.argument("name")
@click.option("--split/--full", "split", default=None,
              help="Override the server's default: route only pools and sites, or everything.")
@_qr_options
@_DIR
@_IFACE
def add_client(name, split, png, svg, qr, invert, directory, ifname) -> None:
    """Create client NAME, add it to the running server, print its config and QR code."""
    from server.provision import ProvisionError, add_client as add

    try:
        added = add(directory, ifname, name, split=split)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    click.echo(added.config_text)
    _show_qr(added.config_text, png, svg, qr, invert)
    where = "added to the running server" if added.live else "the server is not running: it loads the client when it starts"
    click.echo(f"client {name}: {', '.join(added.addresses)}; config in {added.path}; {where}", err=True)


@server.command("show-client")
@click.argument("name")
@_qr_options
@_DIR
@_IFACE
def show_client(name, png, svg, qr, invert, directory, ifname) -> None:
    """Print client NAME's config and QR code again."""
    from server.provision import ProvisionError, client_config

    try:
        text = client_config(directory, ifname, name)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    click.echo(text)
    _show_qr(text, png, svg, qr, invert)


@server.command("remove-client")
@click.argument("name")
@_DIR
@_IFACE
def remove_client(name, directory, ifname) -> None:
    """Remove client NAME; a running server ends its session at once."""
    from server.provision import ProvisionError, remove_client as remove

    try:
        live = remove(directory, ifname, name)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    click.echo(f"client {name} removed" + (" (its session ended)" if live else ""), err=True)


@server.command("list")
@click.option("--json", "as_json", is_flag=True)
@_DIR
@_IFACE
def list_(as_json, directory, ifname) -> None:
    """The clients, their addresses and latest handshakes."""
    from dataclasses import asdict

    from server.provision import ProvisionError, list_clients

    try:
        clients = list_clients(directory, ifname)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        click.echo(json.dumps([asdict(c) for c in clients], indent=2))
        return
    from tunnel.show import ago, human_bytes

    for c in clients:
        state = "server not running" if not c.online else (
            f"latest handshake {ago(c.latest_handshake, time.time())}, "
            f"{human_bytes(c.rx_bytes)} received, {human_bytes(c.tx_bytes)} sent"
            + (f", from {c.endpoint}" if c.endpoint else ""))
        click.echo(f"{c.name:<16} {', '.join(c.addresses):<36} {state}")
    if not clients:
        click.echo("no clients yet: `tunnel server add-client NAME`")
