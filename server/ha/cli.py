"""`tunnel server ha`: parse, call server/ha/admin.py, print one line per outcome or error.

    tunnel server ha --vip 192.0.2.10/24 --dev eth0 [--priority 150] [--no-preempt] [--vrid 51]
    tunnel server ha off
"""

from __future__ import annotations

import click

from server.cli_server import _DIR, _IFACE, _call  # the server group's shared options


def _restart_hint(ifname: str | None) -> str:
    name = ifname or "wg0"
    return f"restart the running server to apply it (systemctl restart tunnel-server@{name})"


@click.group(invoke_without_command=True)
@click.option("--vip", default=None, metavar="ADDR/PREFIX",
              help="The virtual IP clients dial, with its subnet's prefix (e.g. 192.0.2.10/24).")
@click.option("--dev", default=None, metavar="DEV", help="This gateway's device on that subnet.")
@click.option("--priority", type=int, default=None,
              help="1-254: the highest of the running gateways holds the VIP (default 100).")
@click.option("--preempt/--no-preempt", default=None,
              help="Take the VIP back from a lower priority when this gateway returns (default: on).")
@click.option("--vrid", type=int, default=None,
              help="VRRP's virtual router id, 1-255, the same on every gateway (default: from the VIP).")
@_DIR
@_IFACE
@click.pass_context
def ha(ctx, vip, dev, priority, preempt, vrid, directory, ifname) -> None:
    """A virtual IP that moves between this server's gateways (keepalived): run on each gateway."""
    if ctx.invoked_subcommand is not None:
        return
    if not vip or not dev:
        raise click.UsageError("give --vip ADDR/PREFIX and --dev DEV (or `tunnel server ha off`)")
    from server.ha.admin import configure

    done = _call(configure, directory, ifname, vip, dev, priority=priority, preempt=preempt, vrid=vrid)
    m = done.member
    click.echo(f"gateway {done.gateway}: {done.shared.vip} on {m.dev} (its address {m.address}), VRID "
               f"{done.shared.vrid}, priority {m.priority}, {'preempt' if m.preempt else 'no preemption'}; "
               "clients dial the VIP (`show-client NAME` prints their file)", err=True)
    if done.shared_changed:
        click.echo("the VIP or VRID changed for every gateway: restart each one's server", err=True)
    if done.daemon_running:
        click.echo(_restart_hint(ifname), err=True)


@ha.command("off")
@_DIR
@_IFACE
def off(directory, ifname) -> None:
    """This gateway no longer serves the virtual IP (the last one turns it off for the server)."""
    from server.ha.admin import disable

    name, last, running = _call(disable, directory, ifname)
    click.echo(f"gateway {name}: no virtual IP" + ("; none left: clients dial the server's endpoint again"
                                                   if last else ""), err=True)
    if running:
        click.echo(_restart_hint(ifname), err=True)


__all__ = ["ha"]
