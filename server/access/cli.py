"""`tunnel server policy | auth | user | sessions | kick`: parse, call the library, print one line per error.

Everything goes through the registry, so a command works the same on any gateway of a shared
registry and the running daemons follow within seconds (they listen to the registry):

    policy check FILE          validate FILE and run its tests against the registry's clients
    policy apply FILE          the same, then store it: the running server applies it in one switch
    policy explain CLIENT DEST[:PORT[/PROTO]]     the verdict and the rule that decides it
    policy show | counters | remove
    auth local | radius | off | show
    user add | passwd | totp | groups | remove | list       (local accounts, in the registry)
    sessions [--json]          who is logged in, from which client, since when, bytes, expiry
    kick USER|CLIENT           end those sessions now (every gateway)
"""

from __future__ import annotations

import atexit
import json
import time

import click

from server.cli_server import _DIR, _IFACE, _fail  # the server group's shared options

_WAIT = 5.0  # seconds a command waits to see this machine's server apply a change


def _server(directory, ifname):
    """An open registry for the duration of the command (closed at exit)."""
    from server.provision import ProvisionError, open_server

    cm = open_server(directory, ifname)
    try:
        srv = cm.__enter__()
    except ProvisionError as exc:
        raise _fail(str(exc)) from None
    atexit.register(cm.__exit__, None, None, None)
    return srv


def _clients(srv, now: float | None = None):
    """The registry's active clients as the policy sees them (a live session's groups win)."""
    from server.policy import ClientRef

    now = time.time() if now is None else now
    snap = srv.registry.snapshot()
    sessions = {s.client: s for s in snap.sessions if s.live(now)}
    out = []
    for c in snap.active_clients(now):
        groups = sessions[c.name].groups if c.name in sessions else c.groups
        out.append(ClientRef(c.name, c.addresses, frozenset(groups)))
    return snap, out


def _gateway(snap, settings_auth):
    from server.policy import GatewayContext

    services = [f"tcp/{settings_auth.port}"] if settings_auth is not None else []
    return GatewayContext.make(snap.settings.server_addresses(), snap.settings.dns, services)


def _auth_of(snap):
    from .settings import AuthSettingsError, from_settings

    try:
        return from_settings(snap.settings.extra)
    except AuthSettingsError as exc:
        raise _fail(str(exc)) from None


# --- policy -------------------------------------------------------------------------------


@click.group("policy")
def policy() -> None:
    """The access policy: groups, rules (default deny), bandwidth and DNS per group."""


def _checked(file, srv):
    """(policy, clients, problems that refuse it); names that match no client yet are warnings:
    a group may be written before its first member is added."""
    from server.policy import PolicyError
    from server.policy.workflow import check, read_policy

    try:
        pol = read_policy(file)
        snap, clients = _clients(srv)
        gateway = _gateway(snap, _auth_of(snap))
        problems = check(pol, clients, gateway, strict=False)
        for line in check(pol, clients, gateway, strict=True):
            if line not in problems:
                click.echo(f"warning: {line}", err=True)
    except (PolicyError, ValueError) as exc:
        raise _fail(str(exc)) from None
    return pol, clients, problems


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@_DIR
@_IFACE
def policy_check(file, directory, ifname) -> None:
    """Validate FILE and run its tests against the server's clients."""
    pol, clients, problems = _checked(file, _server(directory, ifname))
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise _fail(f"{file}: {len(problems)} problem(s)")
    click.echo(f"{file}: ok: {len(pol.rules)} rule(s), {len(pol.tests)} test(s) passed against {len(clients)} "
               "client(s)")


@policy.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@_DIR
@_IFACE
def policy_apply(file, directory, ifname) -> None:
    """Check FILE, then make it the server's policy (every gateway applies it in one switch)."""
    from server.registry import RegistryError

    srv = _server(directory, ifname)
    pol, clients, problems = _checked(file, srv)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise _fail(f"refused, the previous policy stays in force: {file}: {len(problems)} problem(s)")
    with open(file, encoding="utf-8") as f:
        text = f.read()
    try:
        stored = srv.registry.set_policy(text)
    except RegistryError as exc:
        raise _fail(f"not stored, the previous policy stays in force: {exc}") from None
    click.echo(f"{file}: policy version {stored.version} stored ({len(pol.rules)} rule(s), {len(pol.tests)} "
               f"test(s) passed); running servers apply it within seconds")


@policy.command("remove")
@_DIR
@_IFACE
def policy_remove(directory, ifname) -> None:
    """Remove the policy: every client reaches everything again (as without one)."""
    from server.registry import RegistryError

    srv = _server(directory, ifname)
    try:
        srv.registry.clear_policy()
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    click.echo("policy removed")


@policy.command("show")
@_DIR
@_IFACE
def policy_show(directory, ifname) -> None:
    """Print the server's policy file as stored."""
    pol = _server(directory, ifname).registry.policy()
    if pol is None:
        raise _fail("the server has no policy (every client reaches the site and the internet)")
    click.echo(pol.text, nl=not pol.text.endswith("\n"))


@policy.command("explain")
@click.argument("client")
@click.argument("dest", metavar="DEST[:PORT[/PROTO]]")
@click.option("--file", "file", default=None, help="A policy file to ask instead of the server's.")
@_DIR
@_IFACE
def policy_explain(client, dest, file, directory, ifname) -> None:
    """Print the verdict for CLIENT reaching DEST and the rule that decides it."""
    from server.policy import PolicyError, explain, load_policy
    from server.policy.workflow import read_policy

    srv = _server(directory, ifname)
    try:
        if file:
            pol = read_policy(file)
        else:
            stored = srv.registry.policy()
            if stored is None:
                raise _fail("the server has no policy: everything is accepted")
            pol = load_policy(stored.text, "(server policy)")
        snap, clients = _clients(srv)
        lines = explain(pol, clients, client, dest, _gateway(snap, _auth_of(snap)))
    except (PolicyError, ValueError) as exc:
        raise _fail(str(exc)) from None
    for line in lines:
        click.echo(str(line))


@policy.command("counters")
@_DIR
@_IFACE
def policy_counters(directory, ifname) -> None:
    """Denied packets per client and per reason on this gateway, since the policy was first applied."""
    from server.policy import deny_counters
    from tunnel.nft import NftError

    srv = _server(directory, ifname)
    _snap, clients = _clients(srv)
    try:
        counts = deny_counters(srv.paths.ifname, clients)
    except (NftError, ValueError) as exc:
        raise _fail(f"no policy in force on this machine's {srv.paths.ifname}: {exc}") from None
    for reason, n in sorted(counts.by_reason.items()):
        click.echo(f"reason {reason}: {n}")
    for name, n in sorted(counts.by_client.items()):
        click.echo(f"client {name}: {n}")


# --- auth -------------------------------------------------------------------------------


@click.group("auth")
def auth() -> None:
    """User login before a client's traffic goes further than the login page."""


_LIFETIME = click.option("--lifetime", default="12h", show_default=True, help="A session's longest life.")
_IDLE = click.option("--idle", default="30m", show_default=True, help="Idle time that ends a session.")
_PORT = click.option("--port", default=80, show_default=True, help="The login page's TCP port on the server's "
                     "tunnel address.")


def _store_auth(directory, ifname, settings) -> None:
    from server.registry import RegistryError

    from .settings import KEY

    srv = _server(directory, ifname)
    try:
        # A name that is not a core setting lands in the shared settings' extras.
        srv.registry.update_settings(**{KEY: settings.to_json() if settings is not None else None})
    except RegistryError as exc:
        raise _fail(str(exc)) from None


def _durations(lifetime, idle):
    from .settings import AuthSettingsError, parse_duration

    try:
        return parse_duration(lifetime, "--lifetime"), parse_duration(idle, "--idle")
    except AuthSettingsError as exc:
        raise _fail(str(exc)) from None


@auth.command("local")
@_LIFETIME
@_IDLE
@_PORT
@_DIR
@_IFACE
def auth_local(lifetime, idle, port, directory, ifname) -> None:
    """Log users in with local accounts (`tunnel server user add`), with a one-time code where enrolled."""
    from .settings import AuthSettings, AuthSettingsError

    life, idle_s = _durations(lifetime, idle)
    try:
        settings = AuthSettings("local", lifetime=life, idle=idle_s, port=port)
    except AuthSettingsError as exc:
        raise _fail(str(exc)) from None
    _store_auth(directory, ifname, settings)
    click.echo(settings.describe())


@auth.command("radius")
@click.option("--server", "radius_server", required=True, metavar="HOST[:PORT]", help="The RADIUS server.")
@click.option("--secret-file", required=True, type=click.Path(dir_okay=False),
              help="The shared secret, in a file readable by root only.")
@click.option("--group-attribute", default="Class", show_default=True, type=click.Choice(["Class", "Filter-Id"]),
              help="The reply attribute that names the user's groups.")
@click.option("--otp", default="challenge", show_default=True, type=click.Choice(["challenge", "append"]),
              help="One-time codes: asked after an Access-Challenge, or appended to the password.")
@_LIFETIME
@_IDLE
@_PORT
@_DIR
@_IFACE
def auth_radius(radius_server, secret_file, group_attribute, otp, lifetime, idle, port, directory, ifname) -> None:
    """Log users in against a RADIUS server (groups, Session-Timeout and Idle-Timeout from its replies)."""
    from server.auth.radius import RadiusConfigError, read_secret

    from .settings import AuthSettings, AuthSettingsError

    life, idle_s = _durations(lifetime, idle)
    try:
        settings = AuthSettings("radius", lifetime=life, idle=idle_s, port=port, radius_server=radius_server,
                                radius_secret=read_secret(secret_file), group_attribute=group_attribute, otp=otp)
    except (AuthSettingsError, RadiusConfigError) as exc:
        raise _fail(str(exc)) from None
    _store_auth(directory, ifname, settings)
    click.echo(settings.describe())


@auth.command("off")
@_DIR
@_IFACE
def auth_off(directory, ifname) -> None:
    """No login: a client's key is enough (its sessions end)."""
    _store_auth(directory, ifname, None)
    click.echo("login not required")


@auth.command("show")
@_DIR
@_IFACE
def auth_show(directory, ifname) -> None:
    """The login settings."""
    snap = _server(directory, ifname).registry.snapshot()
    settings = _auth_of(snap)
    click.echo(settings.describe() if settings else "login not required")


# --- users, sessions -----------------------------------------------------------------------


def _account_store(directory, ifname):
    from .stores import RegistryAccountStore

    return RegistryAccountStore(_server(directory, ifname).registry)


def user_group() -> click.Group:
    from server.auth.cli import user_group as make

    return make(_account_store)


def _left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@click.command("sessions")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_DIR
@_IFACE
def sessions(as_json, directory, ifname) -> None:
    """Who is logged in: user, client, since when, bytes, expiry (every gateway's)."""
    srv = _server(directory, ifname)
    now = time.time()
    live = [s for s in srv.registry.sessions(active=True) if s.live(now)]
    if as_json:
        click.echo(json.dumps([{
            "user": s.user, "client": s.client, "gateway": s.gateway, "groups": list(s.groups), "since": s.started,
            "expires": s.expires_at, "idle_timeout": s.idle_timeout, "last_activity": s.last_activity,
            "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes, "id": s.id} for s in live], indent=2))
        return
    if not live:
        click.echo("no one is logged in")
        return
    click.echo(f"{'USER':<16} {'CLIENT':<16} {'GATEWAY':<12} {'SINCE':<17} {'EXPIRES IN':<11} {'RX':>10} "
               f"{'TX':>10}  GROUPS")
    for s in live:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started))
        left = "-" if s.expires_at is None else _left(s.expires_at - now)
        click.echo(f"{s.user:<16} {s.client:<16} {(s.gateway or '-'):<12} {since:<17} {left:<11} {s.rx_bytes:>10} "
                   f"{s.tx_bytes:>10}  {','.join(s.groups) or '-'}")


@click.command("kick")
@click.argument("target", metavar="USER|CLIENT")
@_DIR
@_IFACE
def kick(target, directory, ifname) -> None:
    """End the sessions of USER (or on CLIENT) now, on every gateway."""
    from server.registry import NotFound, RegistryError

    srv = _server(directory, ifname)
    now = time.time()
    try:
        ended = []
        for s in srv.registry.sessions(active=True):
            if target in (s.user, s.client) and s.live(now):
                try:
                    srv.registry.end_session(s.id, "admin-reset", now=now)
                    ended.append(s)
                except NotFound:
                    pass
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    if not ended:
        raise _fail(f"no session of a user or client named {target!r}")
    for s in ended:
        click.echo(f"ended the session of {s.user} on {s.client}")


def mount(server: click.Group) -> None:
    """Add these commands to `tunnel server` (server/commands.py)."""
    server.add_command(policy)
    server.add_command(auth)
    server.add_command(user_group(), "user")
    server.add_command(sessions)
    server.add_command(kick)
