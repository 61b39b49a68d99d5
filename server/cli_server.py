"""`tunnel server ...`: each command parses its arguments and calls server/provision.py or server/daemon.py.

From nothing to a connected client:
    tunnel server init --endpoint vpn.example.com      (registry: /etc/wireguard/wg0.db)
    tunnel server up            (or: systemctl enable --now tunnel-server@wg0)
    tunnel server add-client alice --group work --expires 8h   (prints alice's config and a QR code)
A second gateway of the same server, on a PostgreSQL registry:
    tunnel server init --endpoint vpn.example.com --registry postgresql://tunnel@db/tunnel   (first)
    tunnel server join --registry postgresql://tunnel@db/tunnel                              (others)
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


def _call(fn, *args, **kwargs):
    """Run a provisioning call; its ProvisionError, or a file we may not touch, becomes the one-line CLI error."""
    from server.provision import ProvisionError

    try:
        return fn(*args, **kwargs)
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    except PermissionError as exc:  # /etc/wireguard is root's
        raise _fail(f"{exc.filename or 'a file'}: permission denied: run it as root (sudo), "
                    "or give --dir a directory of yours") from None
    except OSError as exc:
        raise _fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}") from None


def _migrated(result) -> None:
    migration = getattr(result, "migration", None)
    if migration is not None:
        click.echo(f"migrated {migration.clients} client(s) from the old files into the registry; "
                   f"the old files are in {migration.backup}", err=True)
        for note in migration.notes:
            click.echo(f"  {note}", err=True)


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
@click.option("--registry", default=None, metavar="URL|PATH",
              help="Where the server's state lives: a SQLite file (default DIR/IFACE.db) or "
                   "postgresql://... shared by several gateways.")
@click.option("--name", "gateway", default=None, metavar="NAME", help="This gateway's name (default: host name).")
@click.option("--force", is_flag=True, help="Replace an existing server (its clients are forgotten).")
@_DIR
@_IFACE
def init(endpoint, port, pools, dns, sites, nat, client_to_client, split, keepalive, metrics, registry, gateway,
         force, directory, ifname) -> None:
    """Create the server's keys and settings in a new registry."""
    from server.provision import init_server, paths

    local = _call(init_server, directory, ifname, endpoint, port=port, pools=list(pools) or None, dns=list(dns),
                  sites=list(sites), nat=nat, client_to_client=client_to_client, full_tunnel=not split,
                  keepalive=keepalive, metrics=metrics, force=force, registry=registry, gateway=gateway)
    p = _call(paths, directory, ifname)
    click.echo(f"created the server in registry {_shown(local.registry)} and {p.conf}")
    click.echo(f"next: `tunnel server up{'' if p.ifname == 'wg0' else ' -i ' + p.ifname}` "
               f"(or systemctl enable --now tunnel-server@{p.ifname}), then `tunnel server add-client NAME`")


def _shown(location: str) -> str:
    from server.registry import is_postgres

    if is_postgres(location):
        from server.registry.postgres import redact

        return redact(location)
    return location


@server.command()
@click.option("--registry", required=True, metavar="URL", help="The registry of the server to join (postgresql://...).")
@click.option("--name", "gateway", default=None, metavar="NAME", help="This gateway's name (default: host name).")
@click.option("--endpoint", default=None, metavar="HOST[:PORT]",
              help="This gateway's own address: client files list it to fail over to (# FailoverEndpoints).")
@click.option("--metrics", default=None, metavar="HOST:PORT", help="Serve Prometheus metrics there.")
@click.option("--force", is_flag=True, help="Replace this machine's existing IFACE.conf.")
@_DIR
@_IFACE
def join(registry, gateway, endpoint, metrics, force, directory, ifname) -> None:
    """Set up this machine as another gateway of the server in REGISTRY (same key, pools, clients, policy)."""
    from server.provision import join_server, paths

    local = _call(join_server, directory, ifname, registry, gateway=gateway, endpoint=endpoint, metrics=metrics,
                  force=force)
    p = _call(paths, directory, ifname)
    click.echo(f"gateway {local.gateway} joined registry {_shown(local.registry)}; wrote {p.conf}")
    click.echo(f"next: `tunnel server up{'' if p.ifname == 'wg0' else ' -i ' + p.ifname}`")


@server.command()
@click.option("-v", "--verbose", count=True)
@click.option("--no-offload", is_flag=True, help="Plain TUN I/O without the vnet header.")
@_DIR
@_IFACE
def up(verbose, no_offload, directory, ifname) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM (NAT, forwarding, following the registry)."""
    from tunnel.cli import _setup_logging

    _setup_logging(verbose)
    from server.daemon import run_server

    failure = run_server(directory, ifname, vnet_hdr=not no_offload)
    if failure:
        raise _fail(failure)


def _check_qr(png: str | None, svg: str | None) -> None:
    """A picture asked for needs the qrcode package: say so before anything is changed."""
    from server import qr as qrcode

    if (png or svg) and not qrcode.available():
        raise _fail(f"--png and --svg need {qrcode.INSTALL_HINT}")


def _show_qr(text: str, png: str | None, svg: str | None, qr: bool, invert: bool) -> None:
    from server import qr as qrcode

    if qr and not qrcode.available():
        # The config above is the whole of it: a missing picture is no failure.
        click.echo(f"no QR code shown: that needs {qrcode.INSTALL_HINT} (--no-qr: none wanted)", err=True)
    elif qr:
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


_DAEMON_STATE = {
    "applied": "the running server has it",
    "not running": "the server is not running here: it loads the client when it starts",
    "pending": "the running server has not applied it yet (it follows the registry: check `tunnel server list`)",
}


@server.command("add-client")
@click.argument("name")
@click.option("--group", "groups", multiple=True, metavar="GROUP",
              help="A group of the access policy (repeatable, or comma-separated).")
@click.option("--expires", default=None, metavar="WHEN",
              help="Remove the client then: 8h, 90m, 2d, 1w, a date (2026-12-31, through that day) "
                   "or a local time (2026-12-31T18:00).")
@click.option("--split/--full", "split", default=None,
              help="Override the server's default: route only pools and sites, or everything.")
@_qr_options
@_DIR
@_IFACE
def add_client(name, groups, expires, split, png, svg, qr, invert, directory, ifname) -> None:
    """Create client NAME (next free addresses, keys, PSK), print its config and QR code."""
    from server.provision import add_client as add, describe_expiry

    _check_qr(png, svg)
    added = _call(add, directory, ifname, name, groups=groups, expires=expires, split=split)
    _migrated(added)
    click.echo(added.config_text)
    _show_qr(added.config_text, png, svg, qr, invert)
    extra = []
    if added.groups:
        extra.append("groups " + ",".join(added.groups))
    if added.expires_at is not None:
        extra.append(describe_expiry(added.expires_at, time.time()))
    click.echo(f"client {name}: {', '.join(added.addresses)}"
               + "".join(f"; {x}" for x in extra) + f"; {_DAEMON_STATE[added.daemon]}", err=True)


@server.command("show-client")
@click.argument("name")
@_qr_options
@_DIR
@_IFACE
def show_client(name, png, svg, qr, invert, directory, ifname) -> None:
    """Print client NAME's config and QR code again."""
    from server.provision import client_config

    _check_qr(png, svg)
    text = _call(client_config, directory, ifname, name)
    click.echo(text)
    _show_qr(text, png, svg, qr, invert)


@server.command("set-groups")
@click.argument("name")
@click.argument("groups", default="", metavar="GROUP[,GROUP...]")
@_DIR
@_IFACE
def set_groups(name, groups, directory, ifname) -> None:
    """Put client NAME in exactly these groups (an empty list: none)."""
    from server.provision import set_groups as setg

    client = _call(setg, directory, ifname, name, groups)
    click.echo(f"client {name}: groups {','.join(client.groups) or '(none)'}", err=True)


@server.command("set-expiry")
@click.argument("name")
@click.argument("when", metavar="WHEN|never")
@_DIR
@_IFACE
def set_expiry(name, when, directory, ifname) -> None:
    """Change when client NAME expires (as add-client's --expires), or `never`."""
    from server.provision import describe_expiry, set_expiry as sete

    client = _call(sete, directory, ifname, name, when)
    click.echo(f"client {name}: {describe_expiry(client.expires_at, time.time())}", err=True)


@server.command("remove-client")
@click.argument("name")
@_DIR
@_IFACE
def remove_client(name, directory, ifname) -> None:
    """Remove client NAME; every gateway ends its session within seconds (this one before returning)."""
    from server.provision import remove_client as remove

    state = _call(remove, directory, ifname, name)
    click.echo(f"client {name} removed" + (" (its session ended)" if state == "applied" else ""), err=True)


@server.command("list")
@click.option("--json", "as_json", is_flag=True)
@_DIR
@_IFACE
def list_(as_json, directory, ifname) -> None:
    """The clients: addresses, groups, expiry and latest handshakes on this gateway."""
    from dataclasses import asdict

    from server.provision import describe_expiry, list_clients

    now = time.time()
    clients = _call(list_clients, directory, ifname)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in clients], indent=2))
        return
    from tunnel.show import ago, human_bytes

    for c in clients:
        if c.disabled:
            state = "disabled"
        elif c.expired:
            state = "expired"
        elif not c.online:
            state = "not on the running server"
        else:
            state = (f"latest handshake {ago(c.latest_handshake, now)}, "
                     f"{human_bytes(c.rx_bytes)} received, {human_bytes(c.tx_bytes)} sent"
                     + (f", from {c.endpoint}" if c.endpoint else ""))
        groups = ",".join(c.groups) or "-"
        expiry = describe_expiry(c.expires_at, now) if c.expires_at is not None else "no expiry"
        click.echo(f"{c.name:<16} {', '.join(c.addresses):<32} {groups:<20} {expiry:<40} {state}")
    if not clients:
        click.echo("no clients yet: `tunnel server add-client NAME`")


@server.command("show")
@click.option("--json", "as_json", is_flag=True)
@_DIR
@_IFACE
def show(as_json, directory, ifname) -> None:
    """This server as this gateway sees it: where clients dial, the virtual IP, every gateway, this daemon."""
    from server.status import render, server_status

    state = _call(server_status, directory, ifname)
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        click.echo(render(state), nl=False)
