"""The session core on a fake clock: lifetime, idle, kick, replacement, accounting actions."""

from server.auth.backend import Accepted, ClientInfo
from server.auth.sessions import (Account, Grant, MemorySessionStore, Revoke, SessionManager, SessionPolicy)

from .clock import FakeClock

LAPTOP = ClientInfo("laptop", "TEFQVE9Q", "10.8.0.2")
PHONE = ClientInfo("phone", "UEhPTkU=", "10.8.0.3")


def kinds(actions):
    out = []
    for a in actions:
        if isinstance(a, Grant):
            out.append(("grant", a.session.client.name))
        elif isinstance(a, Revoke):
            out.append(("revoke", a.session.client.name, a.cause))
        else:
            out.append((a.record.kind, a.record.client.name))
    return out


def records(actions):
    return [a.record for a in actions if isinstance(a, Account)]


def test_login_grants_and_starts_accounting_with_defaults():
    clock = FakeClock()
    manager = SessionManager()
    session, actions = manager.login(Accepted("alice", ("staff",)), LAPTOP, clock(), session_id="s1")
    assert kinds(actions) == [("grant", "laptop"), ("start", "laptop")]
    assert actions[0].session.groups == ("staff",)
    assert session.expires == clock() + 12 * 3600 and session.idle_timeout == 30 * 60
    assert records(actions)[0].session_id == "s1"
    assert manager.tick(clock()) == []


def test_lifetime_ends_the_session_and_the_backend_overrides_it():
    clock = FakeClock()
    manager = SessionManager(policy=SessionPolicy(interim_interval=None))
    manager.login(Accepted("alice", session_timeout=5, idle_timeout=60), LAPTOP, clock(), counters=(0, 0))
    clock.advance(4.9)
    assert manager.tick(clock(), {"laptop": (5000, 7000)}) == []
    clock.advance(0.1)
    actions = manager.tick(clock(), {"laptop": (6000, 9000)})
    assert kinds(actions) == [("revoke", "laptop", "session-timeout"), ("stop", "laptop")]
    stop = records(actions)[0]
    assert (stop.input_octets, stop.output_octets, stop.session_time, stop.terminate_cause) == \
        (6000, 9000, 5, "session-timeout")
    assert manager.get("laptop") is None and manager.tick(clock()) == []


def test_idle_timeout_ignores_keepalives_but_not_traffic():
    clock = FakeClock()
    manager = SessionManager(policy=SessionPolicy(idle_timeout=60, interim_interval=None))
    manager.login(Accepted("alice"), LAPTOP, clock(), counters=(1000, 1000))
    rx = tx = 1000
    # Keepalives every 10 s each way (32 bytes): still idle.
    for _ in range(5):
        clock.advance(10)
        rx += 32
        tx += 32
        assert manager.tick(clock(), {"laptop": (rx, tx)}) == []
    # A burst of real traffic at t = 55 s keeps it alive past 60 s.
    clock.advance(5)
    rx += 4000
    assert manager.tick(clock(), {"laptop": (rx, tx)}) == []
    clock.advance(59)
    assert manager.tick(clock(), {"laptop": (rx + 32, tx + 32)}) == []
    clock.advance(1)
    actions = manager.tick(clock(), {"laptop": (rx + 64, tx + 64)})
    assert kinds(actions) == [("revoke", "laptop", "idle-timeout"), ("stop", "laptop")]
    stop = records(actions)[0]
    assert stop.input_octets == rx + 64 - 1000 and stop.output_octets == tx + 64 - 1000


def test_counters_going_down_mean_the_peer_was_re_added():
    clock = FakeClock()
    manager = SessionManager(policy=SessionPolicy(interim_interval=None))
    manager.login(Accepted("alice"), LAPTOP, clock(), counters=(10_000, 10_000))
    clock.advance(5)
    manager.tick(clock(), {"laptop": (15_000, 12_000)})
    clock.advance(5)
    manager.tick(clock(), {"laptop": (700, 300)})  # restarted from zero
    actions = manager.logout("laptop", clock() + 1, counters=(900, 400))
    stop = records(actions)[0]
    assert (stop.input_octets, stop.output_octets) == (5000 + 700 + 200, 2000 + 300 + 100)
    assert stop.terminate_cause == "user-request"


def test_interim_updates_at_the_interval_without_bursts():
    clock = FakeClock()
    manager = SessionManager()
    manager.login(Accepted("alice", interim_interval=60), LAPTOP, clock(), counters=(0, 0))
    clock.advance(59)
    assert manager.tick(clock(), {"laptop": (100_000, 0)}) == []
    clock.advance(1)
    actions = manager.tick(clock(), {"laptop": (200_000, 50)})
    assert kinds(actions) == [("interim", "laptop")]
    assert (records(actions)[0].input_octets, records(actions)[0].session_time) == (200_000, 60)
    clock.advance(300)  # the ticks stalled: one update, not five
    actions = manager.tick(clock(), {"laptop": (300_000, 60)})
    assert kinds(actions) == [("interim", "laptop")]
    clock.advance(59)
    assert manager.tick(clock(), {"laptop": (400_000, 60)}) == []


def test_kick_by_user_client_key_or_address():
    clock = FakeClock()
    manager = SessionManager()
    manager.login(Accepted("alice"), LAPTOP, clock())
    manager.login(Accepted("alice"), PHONE, clock())
    actions = manager.kick("alice", clock())
    assert sorted(kinds(actions)) == sorted([("revoke", "laptop", "admin-reset"), ("stop", "laptop"),
                                             ("revoke", "phone", "admin-reset"), ("stop", "phone")])
    for target in ("laptop", LAPTOP.public_key, LAPTOP.address):
        manager.login(Accepted("bob"), LAPTOP, clock())
        manager.login(Accepted("carol"), PHONE, clock())
        assert kinds(manager.kick(target, clock())) == [("revoke", "laptop", "admin-reset"), ("stop", "laptop")]
        assert manager.get("phone").user == "carol"
    assert manager.kick("nobody", clock()) == []


def test_a_new_login_replaces_the_clients_session():
    clock = FakeClock()
    manager = SessionManager()
    first, _ = manager.login(Accepted("alice", ("staff",)), LAPTOP, clock(), session_id="s1")
    clock.advance(10)
    second, actions = manager.login(Accepted("bob", ("ops",)), LAPTOP, clock(), session_id="s2")
    assert kinds(actions) == [("revoke", "laptop", "user-request"), ("stop", "laptop"), ("grant", "laptop"),
                              ("start", "laptop")]
    assert [r.session_id for r in records(actions)] == ["s1", "s2"]
    assert manager.get("laptop").user == "bob" and len(manager.sessions()) == 1


def test_resume_after_restart_and_stop_all():
    clock = FakeClock()
    store = MemorySessionStore()
    SessionManager(store).login(Accepted("alice", session_timeout=100), LAPTOP, clock())
    SessionManager(store).login(Accepted("bob", session_timeout=1000), PHONE, clock())
    clock.advance(200)
    restarted = SessionManager(store)
    actions = restarted.resume(clock())
    assert sorted(kinds(actions)) == sorted([("revoke", "laptop", "session-timeout"), ("stop", "laptop"),
                                             ("grant", "phone")])
    assert kinds(restarted.stop_all(clock())) == [("revoke", "phone", "admin-reboot"), ("stop", "phone")]
    assert store.all() == []


def test_accounting_octets_beyond_four_gigabytes():
    clock = FakeClock()
    manager = SessionManager(policy=SessionPolicy(interim_interval=None))
    manager.login(Accepted("alice"), LAPTOP, clock(), counters=(0, 0))
    clock.advance(60)
    big = 5 * 2 ** 32 + 123
    stop = records(manager.logout("laptop", clock(), counters=(big, 7)))[0]
    assert stop.input_octets == big and stop.session_time == 60


def test_summary_for_the_sessions_listing():
    clock = FakeClock()
    manager = SessionManager(policy=SessionPolicy(idle_timeout=600))
    manager.login(Accepted("alice", ("staff",)), LAPTOP, clock(), counters=(0, 0), session_id="s1", backend="local")
    clock.advance(30)
    manager.tick(clock(), {"laptop": (5000, 6000)})
    assert manager.get("laptop").summary() == {
        "user": "alice", "groups": ["staff"], "client": "laptop", "public_key": LAPTOP.public_key,
        "address": "10.8.0.2", "session_id": "s1", "since": clock() - 30, "expires": clock() - 30 + 12 * 3600,
        "idle_expires": clock() + 600, "rx_bytes": 5000, "tx_bytes": 6000, "backend": "local"}
