"""`tunnel server user add|passwd|totp|groups|remove|list`: parse, prompt, call accounts.py.

The lead mounts the group under `tunnel server`:
    from server.auth.cli import user_group
    server.add_command(user_group(), "user")
`user_group(open_store)` takes the function that opens the account store for
(directory, interface); the default keeps accounts in DIR/IFACE.users.json.

Passwords are asked twice without echo, or read from --password-file FILE
(`-` for standard input: its first line) for scripts; never from an argument,
which other users could read in the process list.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import click

from .accounts import AccountError, AccountStore

_DIR = click.option("--dir", "directory", default=None, metavar="DIR",
                    help="Where the server's files live (default /etc/wireguard).")
_IFACE = click.option("-i", "--interface", "ifname", default=None, metavar="IFACE",
                      help="The server interface (default wg0).")
_PASSWORD_FILE = click.option("--password-file", default=None, metavar="FILE",
                              help="Read the password from the first line of FILE ('-': standard input).")


def _fail(message: str) -> click.ClickException:
    from tunnel.cli import _Fail

    return _Fail(message)


def default_store(directory: str | None, ifname: str | None) -> AccountStore:
    from server.provision import DEFAULT_DIR, DEFAULT_IFACE

    from .accountfile import JsonAccountStore

    return JsonAccountStore(os.path.join(directory or DEFAULT_DIR, f"{ifname or DEFAULT_IFACE}.users.json"))


def _read_password(password_file: str | None) -> str:
    if password_file is not None:
        try:
            if password_file == "-":
                line = sys.stdin.readline()
            else:
                with open(password_file, encoding="utf-8") as f:
                    line = f.readline()
        except OSError as exc:
            raise _fail(f"cannot read the password file: {exc.strerror or exc}") from None
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _fail("no terminal to ask for the password: give --password-file FILE (or - for standard input)")
    return click.prompt("Password", hide_input=True, confirmation_prompt="Repeat password")


def _show_enrolment(enrolment, name: str) -> None:
    from server import qr

    click.echo(f"Scan this with an authenticator app for {name} (or type the key {enrolment.secret}):")
    try:
        click.echo(qr.terminal(enrolment.uri), nl=False)
    except ImportError:
        click.echo("(no QR code: pip install qrcode)")
    click.echo(enrolment.uri)


def user_group(open_store: Callable[[str | None, str | None], AccountStore] = default_store) -> click.Group:
    @click.group("user")
    def user() -> None:
        """Local user accounts for login (password and optional one-time code)."""

    @user.command("add")
    @click.argument("name")
    @click.option("--group", "groups", multiple=True, metavar="GROUP", help="A group the user is in (repeatable).")
    @click.option("--totp", is_flag=True, help="Require a one-time code from an authenticator app.")
    @_PASSWORD_FILE
    @_DIR
    @_IFACE
    def add(name, groups, totp, password_file, directory, ifname) -> None:
        """Add a user."""
        from .accounts import add_user, check_user_name

        try:
            check_user_name(name)
            store = open_store(directory, ifname)
            enrolment = add_user(store, name, _read_password(password_file), groups, with_totp=totp)
        except AccountError as exc:
            raise _fail(str(exc)) from None
        click.echo(f"added user {name}" + (f" (groups {', '.join(groups)})" if groups else ""))
        if enrolment:
            _show_enrolment(enrolment, name)

    @user.command("passwd")
    @click.argument("name")
    @_PASSWORD_FILE
    @_DIR
    @_IFACE
    def passwd(name, password_file, directory, ifname) -> None:
        """Set a user's password."""
        from .accounts import set_password

        try:
            store = open_store(directory, ifname)
            if store.get(name) is None:
                raise AccountError(f"no user named {name!r}")
            set_password(store, name, _read_password(password_file))
        except AccountError as exc:
            raise _fail(str(exc)) from None
        click.echo(f"password of {name} changed")

    @user.command("totp")
    @click.argument("name")
    @click.option("--disable", is_flag=True, help="No one-time code for this user any more.")
    @_DIR
    @_IFACE
    def totp_cmd(name, disable, directory, ifname) -> None:
        """Give a user a new one-time code secret (shown once), or remove it."""
        from .accounts import set_totp

        try:
            enrolment = set_totp(open_store(directory, ifname), name, not disable)
        except AccountError as exc:
            raise _fail(str(exc)) from None
        if enrolment:
            _show_enrolment(enrolment, name)
        else:
            click.echo(f"{name} logs in without a one-time code")

    @user.command("groups")
    @click.argument("name")
    @click.argument("groups", nargs=-1)
    @_DIR
    @_IFACE
    def groups_cmd(name, groups, directory, ifname) -> None:
        """Set a user's groups (none given: no group)."""
        from .accounts import set_groups

        try:
            set_groups(open_store(directory, ifname), name, groups)
        except AccountError as exc:
            raise _fail(str(exc)) from None
        click.echo(f"{name}: groups {', '.join(groups) or 'none'}")

    @user.command("remove")
    @click.argument("name")
    @_DIR
    @_IFACE
    def remove(name, directory, ifname) -> None:
        """Remove a user (a running session ends with `tunnel server kick`)."""
        from .accounts import remove_user

        try:
            remove_user(open_store(directory, ifname), name)
        except AccountError as exc:
            raise _fail(str(exc)) from None
        click.echo(f"removed user {name}")

    @user.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @_DIR
    @_IFACE
    def list_cmd(as_json, directory, ifname) -> None:
        """List users, their groups and whether they use a one-time code."""
        import json

        from .accounts import list_users

        try:
            users = list_users(open_store(directory, ifname))
        except AccountError as exc:
            raise _fail(str(exc)) from None
        if as_json:
            click.echo(json.dumps([{"name": u.name, "groups": list(u.groups), "totp": u.totp} for u in users],
                                  indent=1))
            return
        if not users:
            click.echo("no users")
            return
        width = max(len(u.name) for u in users)
        for u in users:
            click.echo(f"{u.name:<{width}}  {'totp' if u.totp else '    '}  {', '.join(u.groups) or '-'}")

    return user
