"""`tunnel login` against the endpoint on loopback: prompts fed by the test, one-line errors."""

from __future__ import annotations

import os
import socket

import pytest
from click.testing import CliRunner

from client.login import LoginError, describe, interactive_login, logout, server_address
from client.login_cli import login_command, logout_command
from server.auth import totp
from tunnel.config import parse_config
from tunnel.protocol.crypto import DH_GENERATE, encode_key

from .endpoint import running_endpoint


def answers(*values):
    """An `ask` that gives VALUES in turn and records the prompts."""
    queue = list(values)
    asked = []

    def ask(prompt, secret):
        asked.append((prompt, secret))
        return queue.pop(0)

    ask.asked = asked
    return ask


@pytest.fixture
def env():
    with running_endpoint() as e:
        yield e


def test_login_prints_groups_and_expiry(env):
    ask = answers("alice", "wonderland!")
    session = interactive_login("127.0.0.1", ask, port=env.port)
    assert ask.asked == [("User name", False), ("Password", True)]
    assert describe(session) == ("logged in as alice (groups: staff, ops) until 2027-01-15 20:00:00 UTC "
                                 "(12 h 0 min); ends after 30 min idle")
    assert env.service.session_of(env.clients["127.0.0.1"]).user == "alice"
    assert logout("127.0.0.1", env.port) is True and logout("127.0.0.1", env.port) is False


def test_challenge_asks_for_the_code(env):
    code = totp.code_at(env.bob_secret, env.clock())
    ask = answers("bob", "builder-bob", code)
    session = interactive_login("127.0.0.1", ask, port=env.port)
    assert [p for p, _s in ask.asked] == ["User name", "Password", "One-time code"]
    assert session["user"] == "bob" and session["groups"] == ["admins"]


def test_wrong_password_then_locked(env):
    for _ in range(5):
        with pytest.raises(LoginError, match="^wrong user name, password or code$"):
            interactive_login("127.0.0.1", answers("alice", "not-it-at-all"), port=env.port)
    with pytest.raises(LoginError, match="^locked after too many failed logins: try again in 5 min$"):
        interactive_login("127.0.0.1", answers("alice", "wonderland!"), port=env.port)


def test_unreachable_server_is_one_line_and_asks_nothing():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ask = answers()
    with pytest.raises(LoginError, match=r"^cannot reach the login server at http://127.0.0.1:\d+/: .*tunnel up"):
        interactive_login("127.0.0.1", ask, port=port)
    assert ask.asked == []


def test_the_command_with_standard_input(env):
    runner = CliRunner()
    result = runner.invoke(login_command, ["--server", "127.0.0.1", "--port", str(env.port)],
                           input="alice\nwonderland!\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("ends after 30 min idle") and "wonderland" not in result.output
    result = runner.invoke(login_command, ["--server", "127.0.0.1", "--port", str(env.port), "-u", "alice"],
                           input="bad-password\n")
    assert result.exit_code == 1 and result.output == "tunnel: wrong user name, password or code\n"
    result = runner.invoke(logout_command, ["--server", "127.0.0.1", "--port", str(env.port)])
    assert result.exit_code == 0 and result.output == "logged out\n"


def test_the_command_without_a_readable_config(tmp_path):
    result = CliRunner().invoke(login_command, ["wg7", "--config", str(tmp_path / "wg7.conf")])
    assert result.exit_code == 1 and "cannot read" in result.output and "--server ADDR" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _config(interface: str, peer: str = "AllowedIPs = 0.0.0.0/0") -> str:
    key = encode_key(DH_GENERATE(os.urandom(32)))
    other = encode_key(DH_GENERATE(os.urandom(32)))
    return f"[Interface]\nPrivateKey = {key}\n{interface}\n\n[Peer]\nPublicKey = {other}\n{peer}\n"


@pytest.mark.parametrize("interface,peer,expected", [
    ("Address = 10.8.0.2/24, fd08::2/64", "AllowedIPs = 0.0.0.0/0, ::/0", "10.8.0.1"),  # wg-quick style
    ("Address = 10.8.0.7/32\nDNS = 10.8.0.1", "AllowedIPs = 10.8.0.0/24, 192.168.5.0/24", "10.8.0.1"),  # split
    ("Address = 10.9.0.7/32\nDNS = 10.9.0.1", "AllowedIPs = 0.0.0.0/0", "10.9.0.1"),  # full tunnel: the DNS
    ("Address = fd08::7/128", "AllowedIPs = fd08::/64", "fd08::1"),
])
def test_server_address_from_the_config(interface, peer, expected):
    assert server_address(parse_config(_config(interface, peer), filename="wg0.conf")) == expected


def test_server_address_unknown():
    config = parse_config(_config("Address = 10.9.0.7/32"), filename="wg0.conf")
    with pytest.raises(LoginError, match="give --server ADDR"):
        server_address(config)
