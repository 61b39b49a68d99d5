"""The RADIUS backend against a real FreeRADIUS (Debian's), started by the test on loopback.

FreeRADIUS checks the codes with its own TOTP module, so our codes (computed
with our totp.py at the real time) are checked by an independent implementation.
"""

from __future__ import annotations

import logging
import os
import re
import time

import pytest

from server.auth import totp
from server.auth.backend import Accepted, AccountingRecord, AuthRequest, Challenged, ClientInfo, Rejected
from server.auth.radius import RadiusBackend, RadiusConfig, RadiusConfigError, RadiusUnavailable, read_secret
from server.auth.service import LoginService
from tunnel import loginapi

from .clock import FakeClock
from .freeradius import ALICE_PASSWORD, ALICE_TOTP, CAROL_PASSWORD, CAROL_TOTP, freeradius

LAPTOP = ClientInfo("laptop", "bGFwdG9wLWtleQ==", "10.8.0.2")
PHONE = ClientInfo("phone", "cGhvbmUta2V5", "fd08::3")


@pytest.fixture(scope="module")
def fr(tmp_path_factory):
    started = time.monotonic()
    with freeradius(tmp_path_factory.mktemp("freeradius")) as server:
        print(f"freeradius ready in {time.monotonic() - started:.2f} s")
        yield server


def backend(fr, **options) -> RadiusBackend:
    return RadiusBackend(RadiusConfig(host="127.0.0.1", auth_port=fr.auth_port, acct_port=fr.acct_port,
                                      secret=fr.secret, nas_identifier="au-test", nas_ip_address="127.0.0.1",
                                      **options))


def fresh_code(secret: str) -> str:
    """A code FreeRADIUS will still see as current: wait out the last 2 s of a step."""
    if time.time() % 30 > 28:
        time.sleep(30 - time.time() % 30 + 0.05)
    return totp.code_at(secret, time.time())


def detail_records(fr) -> list[dict[str, str]]:
    records = []
    for block in fr.detail_text().strip().split("\n\n"):
        fields = {}
        for line in block.splitlines()[1:]:
            key, _, value = line.strip().partition(" = ")
            value = value.strip('"')
            fields[key] = f"{fields[key]},{value}" if key in fields else value
        records.append(fields)
    return records


def test_password_then_challenge_then_code(fr):
    b = backend(fr)
    first = b.authenticate(AuthRequest("alice", ALICE_PASSWORD, LAPTOP), time.time())
    assert isinstance(first, Challenged)
    assert first.message == "Enter your one-time code" and first.state
    result = b.authenticate(AuthRequest("alice", "", LAPTOP, code=fresh_code(ALICE_TOTP), state=first.state),
                            time.time())
    assert result == Accepted(user="alice", groups=("staff", "admins"), session_timeout=5, idle_timeout=60,
                              interim_interval=60, accounting_class=(b"staff", b"admins"))
    log = fr.log.read_text()
    assert "Calling-Station-Id = \"bGFwdG9wLWtleQ==\"" in log and "Framed-IP-Address = 10.8.0.2" in log
    assert "NAS-Identifier = \"au-test\"" in log


def test_code_given_with_the_password_answers_the_challenge_at_once(fr):
    result = backend(fr).authenticate(AuthRequest("alice", ALICE_PASSWORD, PHONE, code=fresh_code(ALICE_TOTP)),
                                      time.time())
    assert isinstance(result, Accepted) and result.groups == ("staff", "admins") and result.session_timeout == 5
    assert "Framed-IPv6-Address = fd08::3" in fr.log.read_text()


def test_groups_from_filter_id(fr):
    result = backend(fr, group_attribute="Filter-Id").authenticate(
        AuthRequest("alice", ALICE_PASSWORD, LAPTOP, code=fresh_code(ALICE_TOTP)), time.time())
    assert isinstance(result, Accepted) and result.groups == ("ops",)


def test_wrong_password_or_code_is_rejected(fr):
    b = backend(fr)
    assert b.authenticate(AuthRequest("alice", "not-her-password", LAPTOP, code=fresh_code(ALICE_TOTP)),
                          time.time()) == Rejected("rejected by RADIUS")
    wrong = f"{(int(fresh_code(ALICE_TOTP)) + 1) % 1000000:06d}"
    assert isinstance(b.authenticate(AuthRequest("alice", ALICE_PASSWORD, LAPTOP, code=wrong), time.time()),
                      Rejected)
    challenge = b.authenticate(AuthRequest("alice", ALICE_PASSWORD, LAPTOP), time.time())
    assert b.authenticate(AuthRequest("alice", "", LAPTOP, code=wrong, state=challenge.state), time.time()) == \
        Rejected("wrong code")
    # A State FreeRADIUS never issued does not skip the password.
    assert isinstance(b.authenticate(AuthRequest("alice", "", LAPTOP, code=fresh_code(ALICE_TOTP),
                                                 state=b"forged-state-1234"), time.time()), Rejected)
    assert isinstance(b.authenticate(AuthRequest("nobody", "x", LAPTOP), time.time()), Rejected)


def test_code_appended_to_the_password(fr):
    b = backend(fr, otp_mode="append", group_attribute="Filter-Id")
    assert b.code_with_password
    ok = b.authenticate(AuthRequest("carol", CAROL_PASSWORD, LAPTOP, code=fresh_code(CAROL_TOTP)), time.time())
    assert ok == Accepted(user="carol", groups=("ops",), interim_interval=60)
    assert isinstance(b.authenticate(AuthRequest("carol", CAROL_PASSWORD, LAPTOP, code="000000"), time.time()),
                      Rejected)
    assert isinstance(b.authenticate(AuthRequest("carol", CAROL_PASSWORD, LAPTOP), time.time()), Rejected)


def test_accounting_start_interim_stop_reach_the_detail_file(fr):
    clock = FakeClock(time.time())
    service = LoginService(backend(fr, otp_mode="append", group_attribute="Filter-Id"), clock=clock,
                           counters_of=lambda name: (1_000, 2_000))
    try:
        result = service.login(LAPTOP, "carol", CAROL_PASSWORD, fresh_code(CAROL_TOTP))
        assert result.ok and result.session.groups == ("ops",)
        sid = result.session.session_id
        clock.advance(60)  # Acct-Interim-Interval = 60 from the Access-Accept
        actions = service.tick({"laptop": (1_000 + 150_000, 2_000 + 9_000_000)})
        assert [a.record.kind for a in actions] == ["interim"]
        clock.advance(30)
        assert [s.user for s in service.kick("carol")] == ["carol"]
        assert service.flush_accounting()
    finally:
        service.close()
    mine = [r for r in detail_records(fr) if r.get("Acct-Session-Id") == sid]
    assert [r["Acct-Status-Type"] for r in mine] == ["Start", "Interim-Update", "Stop"]
    start, interim, stop = mine
    assert start["User-Name"] == "carol" and start["Calling-Station-Id"] == LAPTOP.public_key
    assert start["Framed-IP-Address"] == "10.8.0.2" and start["NAS-Identifier"] == "au-test"
    assert (interim["Acct-Input-Octets"], interim["Acct-Output-Octets"], interim["Acct-Session-Time"]) == \
        ("150000", "9000000", "60")
    assert int(stop["Acct-Input-Octets"]) > 0 and stop["Acct-Session-Time"] == "90"
    assert stop["Acct-Terminate-Cause"] == "Admin-Reset"


def test_session_timeout_from_radius_ends_the_session_with_class_echoed(fr):
    clock = FakeClock(time.time())
    granted, revoked = [], []

    def on_actions(actions):
        for a in actions:
            name = type(a).__name__
            (granted if name == "Grant" else revoked if name == "Revoke" else []).append(a)

    service = LoginService(backend(fr), clock=clock, on_actions=on_actions, counters_of=lambda name: (0, 0))
    try:
        result = service.login(PHONE, "alice", ALICE_PASSWORD, fresh_code(ALICE_TOTP))
        assert result.ok and granted[0].session.groups == ("staff", "admins")
        clock.advance(4)
        service.tick({"phone": (700, 900)})
        assert revoked == []
        clock.advance(1)  # Session-Timeout = 5
        service.tick({"phone": (800, 1000)})
        assert [r.cause for r in revoked] == ["session-timeout"]
        assert service.flush_accounting()
    finally:
        service.close()
    stop = [r for r in detail_records(fr) if r.get("Acct-Session-Id") == result.session.session_id][-1]
    assert stop["Acct-Status-Type"] == "Stop" and stop["Acct-Terminate-Cause"] == "Session-Timeout"
    assert (stop["Acct-Input-Octets"], stop["Acct-Output-Octets"]) == ("800", "1000")
    assert stop["Framed-IPv6-Address"] == "fd08::3"
    assert stop["Class"] == "0x7374616666,0x61646d696e73"  # both, echoed as FreeRADIUS sent it (RFC 2865 5.25)


def test_a_stopped_freeradius_is_a_clear_refusal_and_sessions_go_on(tmp_path, caplog):
    clock = FakeClock(time.time())
    with freeradius(tmp_path / "fr") as down:
        b = RadiusBackend(RadiusConfig(host="127.0.0.1", auth_port=down.auth_port, acct_port=down.acct_port,
                                       secret=down.secret, timeout=1.0, tries=2))
        service = LoginService(b, clock=clock)
        try:
            assert service.login(LAPTOP, "alice", ALICE_PASSWORD, fresh_code(ALICE_TOTP)).ok
        finally:
            pass
    # FreeRADIUS is stopped now.
    caplog.set_level(logging.INFO, logger="tunnel.auth")
    try:
        started = time.monotonic()
        result = service.login(PHONE, "alice", ALICE_PASSWORD)
        print(f"refusal after {time.monotonic() - started:.2f} s")
        assert (result.ok, result.error) == (False, loginapi.UNAVAILABLE)
        assert "not answering" in result.message
        assert f"RADIUS server 127.0.0.1:{down.auth_port} did not answer (2 tries in 2 s)" in caplog.text
        # Not the user's fault: no lockout count.
        assert service.lockout.store.count_failures("user", "alice", 0) == 0
        # The session from before goes on, and its accounting failures are only logged.
        clock.advance(3)  # within alice's Session-Timeout of 5 s
        service.tick({"laptop": (10, 10)})
        assert service.session_of(LAPTOP) is not None
        with pytest.raises(RadiusUnavailable):
            b.account(AccountingRecord("interim", "x", "alice", LAPTOP))
    finally:
        service.close()
    assert ALICE_PASSWORD not in caplog.text


def test_secret_file_must_be_private(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret\n")
    os.chmod(path, 0o644)
    with pytest.raises(RadiusConfigError, match=r"readable by others \(mode 0644\): chmod 600"):
        read_secret(str(path))
    os.chmod(path, 0o600)
    assert read_secret(str(path)) == b"s3cret"
    config = RadiusConfig.from_options("[::1]:1645", str(path), group_attribute="Filter-Id")
    assert (config.host, config.auth_port, config.where) == ("::1", 1645, "[::1]:1645")
    with pytest.raises(RadiusConfigError, match="group attribute"):
        RadiusConfig.from_options("radius.example", str(path), group_attribute="Reply-Message")
    assert not re.search("s3cret", repr(config))
