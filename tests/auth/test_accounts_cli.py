"""`tunnel server user ...` through click, on the JSON account file."""

import json
import os
import stat

import click
import pytest
from click.testing import CliRunner

from server.auth import passwords, totp
from server.auth.accountfile import JsonAccountStore
from server.auth.accounts import AccountError
from server.auth.cli import user_group


@pytest.fixture
def run(tmp_path):
    group = user_group()

    @click.group()
    def server():
        pass

    server.add_command(group, "user")
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(server, ["user", *args, "--dir", str(tmp_path), "-i", "wg9"], input=input)

    return invoke


def test_add_list_passwd_totp_groups_remove(run, tmp_path):
    path = tmp_path / "wg9.users.json"
    result = run("add", "alice", "--group", "staff", "--group", "ops", "--password-file", "-",
                 input="wonderland!\n")
    assert result.exit_code == 0, result.output
    assert "added user alice" in result.output and "wonderland" not in result.output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = json.loads(path.read_text())["users"]["alice"]
    assert passwords.verify_password("wonderland!", stored["password"]) and stored["groups"] == ["staff", "ops"]
    assert stored["totp_secret"] is None

    result = run("add", "bob", "--totp", "--password-file", "-", input="builder-bob\n")
    assert result.exit_code == 0, result.output
    secret = json.loads(path.read_text())["users"]["bob"]["totp_secret"]
    assert f"otpauth://totp/tunnel:bob?secret={secret}" in result.output
    assert "▀" in result.output or "▄" in result.output  # the QR code

    result = run("list")
    assert result.exit_code == 0
    assert result.output.splitlines() == ["alice        staff, ops", "bob    totp  -"]

    pwfile = tmp_path / "pw"
    pwfile.write_text("new-password\n")
    assert run("passwd", "alice", "--password-file", str(pwfile)).exit_code == 0
    assert JsonAccountStore(str(path)).get("alice") is not None
    assert passwords.verify_password("new-password", json.loads(path.read_text())["users"]["alice"]["password"])

    assert run("groups", "bob", "admins").exit_code == 0
    assert run("totp", "alice").exit_code == 0
    assert run("totp", "bob", "--disable").exit_code == 0
    listed = json.loads(run("list", "--json").output)
    assert listed == [{"name": "alice", "groups": ["staff", "ops"], "totp": True},
                      {"name": "bob", "groups": ["admins"], "totp": False}]

    assert run("remove", "bob").exit_code == 0
    assert [u["name"] for u in json.loads(run("list", "--json").output)] == ["alice"]


@pytest.mark.parametrize("args,input,message", [
    (("add", "bad name", "--password-file", "-"), "long-enough\n", "is not a valid user name"),
    (("add", "carol", "--password-file", "-"), "short\n", "the password is too short"),
    (("add", "carol", "--group", "bad group", "--password-file", "-"), "long-enough\n", "not a valid group name"),
    (("passwd", "nobody", "--password-file", "-"), "long-enough\n", "no user named 'nobody'"),
    (("remove", "nobody"), None, "no user named 'nobody'"),
    (("add", "carol", "--password-file", "/nonexistent/pw"), None, "cannot read the password file"),
    (("add", "carol"), "", "give --password-file"),  # no terminal to prompt on
])
def test_mistakes_are_one_line_errors(run, args, input, message):
    result = run(*args, input=input)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_duplicate_user_and_insecure_file(run, tmp_path):
    assert run("add", "alice", "--password-file", "-", input="wonderland!\n").exit_code == 0
    result = run("add", "alice", "--password-file", "-", input="wonderland!\n")
    assert result.exit_code == 1 and "already exists" in result.output
    os.chmod(tmp_path / "wg9.users.json", 0o644)
    result = run("list")
    assert result.exit_code == 1 and "chmod 600" in result.output


def test_file_store_totp_step_is_compare_and_set(tmp_path):
    store = JsonAccountStore(str(tmp_path / "u.json"))
    from server.auth.accounts import add_user

    add_user(store, "alice", "wonderland!", with_totp=True)
    step = totp.step_at(1_800_000_000)
    assert store.advance_totp_step("alice", step)
    assert not store.advance_totp_step("alice", step)
    assert not store.advance_totp_step("alice", step - 1)
    assert store.advance_totp_step("alice", step + 1)
    assert not store.advance_totp_step("nobody", step)
    (tmp_path / "u.json").write_text("{}")
    os.chmod(tmp_path / "u.json", 0o600)
    with pytest.raises(AccountError, match="not an accounts file"):
        store.all()
