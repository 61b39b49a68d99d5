"""server/access without root: login settings, the registry behind the login code's stores, the
sessions file, and the CLI's one-line errors."""

from __future__ import annotations

import os
import threading
import time

import pytest

from server.access.control import AccessControl
from server.access.sessionfile import SessionFile
from server.access.settings import AuthSettings, AuthSettingsError, from_settings, parse_duration
from server.access.stores import RegistryAccountStore, RegistryFailureStore
from server.auth.accounts import Account, AccountError
from server.auth.backend import Accepted, ClientInfo
from server.auth.lockout import Lockout
from server.auth.sessions import SessionManager
from server.registry import RegistryUnavailable, ServerSettings, open_registry


@pytest.fixture
def registry(tmp_path):
    reg = open_registry(str(tmp_path / "r.db"))
    reg.initialize(ServerSettings(private_key="k" * 43 + "=", pools=("10.8.0.0/24",)))
    yield reg
    reg.close()


def test_durations_and_settings_round_trip():
    assert [parse_duration(t, "x") for t in ("90", "90s", "30m", "12h", "2d")] == [90, 90, 1800, 43200, 172800]
    for bad in ("", "0", "-5m", "1w", "soon"):
        with pytest.raises(AuthSettingsError):
            parse_duration(bad, "--idle")
    radius = AuthSettings("radius", lifetime=600, idle=60, radius_server="192.0.2.5:1812", radius_secret=b"s3cret",
                          group_attribute="Filter-Id", otp="append")
    again = from_settings({"auth": radius.to_json()})
    assert again == radius and "s3cret" not in repr(again)
    assert from_settings({}) is None and from_settings({"auth": None}) is None
    with pytest.raises(AuthSettingsError):
        AuthSettings("radius", radius_server="x")  # no secret
    with pytest.raises(AuthSettingsError):
        from_settings({"auth": {"backend": "ldap"}})


def test_accounts_in_the_registry_and_a_code_used_once_across_gateways(registry, tmp_path):
    store = RegistryAccountStore(registry)
    store.add(Account("alice", "scrypt$x", ("staff",), "SECRET"))
    with pytest.raises(AccountError):
        store.add(Account("alice", "scrypt$y"))
    assert store.get("alice").groups == ("staff",) and store.get("nobody") is None
    # A second gateway on the same registry: a TOTP step accepted on one is refused on the other.
    other = open_registry(str(tmp_path / "r.db"), create=False)
    try:
        assert store.advance_totp_step("alice", 100)
        assert not RegistryAccountStore(other).advance_totp_step("alice", 100)
        assert RegistryAccountStore(other).advance_totp_step("alice", 101)
        assert not store.advance_totp_step("alice", 101)
    finally:
        other.close()
    assert store.remove("alice") and not store.remove("alice")


def test_lockout_is_shared_and_survives_a_registry_outage(registry):
    lockout = Lockout(RegistryFailureStore(registry))
    now = 1000.0
    for i in range(5):
        lockout.failure("mallory", "laptop", now + i)
    assert lockout.locked("mallory", "other-device", now + 10) is not None  # the user is locked
    assert lockout.locked("someone", "laptop", now + 10) is not None  # and so is the client
    assert lockout.locked("mallory", "x", now + 5 + 301) is None  # 5 minutes later

    class Unreachable:  # a PostgreSQL that went away: every call raises as the backend does
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise RegistryUnavailable("registry postgresql://db/tunnel: connection refused")
            return fail

    down = Lockout(RegistryFailureStore(Unreachable()))  # counted in memory, never a crash
    for i in range(5):
        down.failure("eve", "phone", now + i)
    assert down.locked("eve", "x", now + 10) is not None


def test_sessions_file_keeps_sessions_over_a_restart(tmp_path):
    path = str(tmp_path / "wg0.sessions.json")
    manager = SessionManager(SessionFile(path))
    client = ClientInfo("laptop", "pub", "10.8.0.2")
    session, _ = manager.login(Accepted("alice", ("staff",), accounting_class=(b"\x01\x02",)), client, 100.0)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again = SessionManager(SessionFile(path))
    [restored] = again.sessions()
    assert restored == session
    actions = again.resume(200.0)  # still within lifetime and idle: granted again
    assert [type(a).__name__ for a in actions] == ["Grant"]
    open(path, "w").write("not json")
    assert SessionFile(path).all() == []  # a bad file is no crash


def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from server.commands import server

    runner = CliRunner()
    res = runner.invoke(server, ["policy", "show", "--dir", str(tmp_path), "-i", "wg9"])
    assert res.exit_code == 1 and "Traceback" not in res.output and "run `tunnel server init` first" in res.output
    res = runner.invoke(server, ["init", "--endpoint", "192.0.2.1", "--dir", str(tmp_path), "-i", "wg9"])
    assert res.exit_code == 0, res.output
    for args in (["auth", "local", "--idle", "soon"], ["kick", "nobody"], ["policy", "show"],
                 ["auth", "radius", "--server", "192.0.2.9", "--secret-file", str(tmp_path / "missing")]):
        res = runner.invoke(server, [*args, "--dir", str(tmp_path), "-i", "wg9"])
        assert res.exit_code == 1 and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, \
            (args, res.output)
    res = runner.invoke(server, ["auth", "local", "--idle", "10m", "--dir", str(tmp_path), "-i", "wg9"])
    assert res.exit_code == 0 and "10m idle" in res.output
    assert "login: local accounts" in runner.invoke(server, ["auth", "show", "--dir", str(tmp_path), "-i", "wg9"]).output
    time.sleep(0)


class _Reconciler:
    snapshot = None

    def add_listener(self, fn) -> None:
        pass


def test_the_ticker_sleeps_without_login_and_wakes_for_actions_and_close(tmp_path):
    """With no login configured the access thread has nothing to do on a clock: it must block
    (it once spun, taking a core and starving the data plane of the GIL: 10 ms RTT)."""
    control = AccessControl(lambda: None, _Reconciler(), gateway="gw", state_dir=str(tmp_path))
    turns = []
    handled = []
    control._process_actions = lambda: turns.append(1)  # one per turn of the loop
    control._handle_actions = handled.append
    thread = threading.Thread(target=control._tick_loop, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # longer than TICK: a spinning loop would have turned thousands of times
        assert turns == [], len(turns)
        control._on_login_actions(["kick"])
        deadline = time.monotonic() + 5
        while not turns and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(turns) == 1  # woken once, for the action
    finally:
        control.close()
        thread.join(5)
    assert not thread.is_alive()  # close() wakes it
