"""Roles and commands plug into the library through entry points (tunnel/role.py); no root needed."""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from client.role import ClientRole
from tunnel import cli, role
from tunnel.config import parse_config
from tunnel.interface import Interface, InterfaceError, Options
from tunnel.protocol.crypto import DH_PUBKEY, encode_key


def _config(allowed: str, table: str | None = None):
    text = (f"[Interface]\nPrivateKey = {encode_key(os.urandom(32))}\n"
            + (f"Table = {table}\n" if table else "")
            + f"\n[Peer]\nPublicKey = {encode_key(DH_PUBKEY(os.urandom(32)))}\nAllowedIPs = {allowed}\n")
    return parse_config(text, name="wgr0")


def _chosen(allowed: str, table: str | None = None, **options) -> list:
    iface = Interface(_config(allowed, table), Options(**options))
    iface.full_tunnel = (allowed.startswith("0.0.0.0/0"), "::/0" in allowed)  # as bring-up finds them
    return iface._roles()


def test_the_client_role_applies_itself_to_full_tunnel_configs_as_wg_quick_decides(tmp_path):
    assert [type(r) for r in _chosen("0.0.0.0/0, ::/0", state_dir=str(tmp_path))] == [ClientRole]
    assert _chosen("10.0.0.0/8", state_dir=str(tmp_path)) == []
    assert _chosen("0.0.0.0/0", table="off", state_dir=str(tmp_path)) == []
    assert _chosen("0.0.0.0/0", table="1234", state_dir=str(tmp_path)) == []


def test_handed_in_roles_and_steps_come_after_the_configs_own(tmp_path):
    class Gateway(role.Role):
        pass

    handed = Gateway()
    roles = _chosen("0.0.0.0/0", state_dir=str(tmp_path), roles=[handed], extra_setup=[lambda i: None])
    assert [type(r) for r in roles] == [ClientRole, Gateway, role.SetupSteps]
    assert roles[1] is handed


def _broken(group: str, name: str = "broken") -> EntryPoint:
    return EntryPoint(name=name, value="no_such_package.module:thing", group=group)


def test_an_interface_does_not_come_up_without_a_role_that_might_apply(tmp_path, monkeypatch):
    monkeypatch.setattr(role, "entry_points", lambda: [_broken(role.GROUP)])
    with pytest.raises(InterfaceError, match=r"^role 'broken' \(no_such_package.module:thing\) cannot be loaded: "
                                             r"ModuleNotFoundError"):
        _chosen("10.0.0.0/8", state_dir=str(tmp_path))


def test_commands_are_found_by_name_and_a_broken_one_is_one_warning(monkeypatch):
    declared = role.command_entry_points()
    assert {ep.name for ep in declared} == {"server", "login", "logout", "demo", "bench"}
    monkeypatch.setattr(role, "command_entry_points", lambda: [*declared, _broken(role.COMMANDS)])
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    assert all(f"  {name} " in result.output for name in ("server", "login", "logout", "demo", "bench", "genkey"))
    assert "  broken " not in result.output
    assert result.output.count("cannot be loaded") == 1  # one line about it, no traceback
    result = CliRunner().invoke(cli.main, ["broken"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "tunnel: warning: command 'broken' (no_such_package.module:thing) cannot be loaded" in result.output
    for group in ("server", "login", "logout", "demo", "bench"):
        assert CliRunner().invoke(cli.main, [group, "--help"]).exit_code == 0, group


def test_the_undo_may_import_only_modules_of_the_packages_that_plug_in():
    assert role.packages() == {"tunnel", "client", "server", "tunnel_lab"}
