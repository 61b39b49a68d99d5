"""The registry's contract, run against SQLite and against a real PostgreSQL (server/registry/base.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from server.registry import (
    Conflict,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    ServerSettings,
    open_registry,
)
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key


def _key() -> str:
    return encode_key(DH_PUBKEY(DH_GENERATE(os.urandom(32))))


SERVER_KEY = encode_key(DH_GENERATE(os.urandom(32)))
SETTINGS = ServerSettings(private_key=SERVER_KEY, endpoint="vpn.example.com", pools=("10.8.0.0/29", "fd08::/64"),
                          dns=("10.8.0.1",))


@pytest.fixture
def reg(registry_location):
    r = open_registry(registry_location)
    r.initialize(SETTINGS)
    yield r
    r.close()


def test_settings_round_trip_and_init_refuses_twice(registry_location):
    with open_registry(registry_location) as r:
        assert not r.initialized() and r.revision() == 0
        with pytest.raises(NotFound, match="tunnel server init"):
            r.settings()
        r.initialize(SETTINGS)
        assert r.initialized() and r.settings() == SETTINGS
        with pytest.raises(Conflict, match="--force"):
            r.initialize(SETTINGS)
        r.add_client("alice", _key())
        r.update_settings(keepalive=10, ha={"vip": "192.0.2.10/24"})
        s = r.settings()
        assert s.keepalive == 10 and s.extra == {"ha": {"vip": "192.0.2.10/24"}} and s.pools == SETTINGS.pools
        r.initialize(SETTINGS, force=True)  # forgets the clients
        assert r.clients() == [] and r.settings() == SETTINGS


def test_addresses_are_the_lowest_free_and_never_the_servers(reg):
    a = reg.add_client("alice", _key(), groups=["work", "management", "work"])
    b = reg.add_client("bob", _key())
    assert (a.ipv4, a.ipv6, b.ipv4, b.ipv6) == ("10.8.0.2", "fd08::2", "10.8.0.3", "fd08::3")
    assert a.addresses == ["10.8.0.2/32", "fd08::2/128"] and a.groups == ("management", "work")
    reg.remove_client("alice")
    assert reg.add_client("carol", _key()).ipv4 == "10.8.0.2"  # a freed address is handed out again
    with pytest.raises(Conflict, match="taken"):
        reg.add_client("dave", _key(), addresses=["10.8.0.3"])
    with pytest.raises(Conflict, match="not a free client address"):
        reg.add_client("dave", _key(), addresses=["10.8.0.1"])
    assert reg.add_client("dave", _key(), addresses=["10.8.0.6/32"]).ipv4 == "10.8.0.6"


def test_failed_changes_leave_nothing_behind(reg):
    key = _key()
    reg.add_client("alice", key)
    before = (reg.revision(), reg.clients())
    for kwargs, error, message in (
        ({"name": "alice", "public_key": _key()}, Conflict, "already exists"),
        ({"name": "bob", "public_key": key}, Conflict, "public key"),
        ({"name": "bob", "public_key": encode_key(DH_PUBKEY(__import__("base64").b64decode(SERVER_KEY)))},
         Conflict, "server's own"),
        ({"name": "bad name", "public_key": _key()}, RegistryError, "client name"),
        ({"name": "bob", "public_key": _key(), "groups": ["ok", "no spaces"]}, RegistryError, "group name"),
    ):
        with pytest.raises(error, match=message):
            reg.add_client(**kwargs)
    assert (reg.revision(), reg.clients()) == before
    for i in range(4):  # /29: .1 server, .2 alice, .3-.6 free
        reg.add_client(f"c{i}", _key())
    with pytest.raises(Conflict, match="pool 10.8.0.0/29 is full"):
        reg.add_client("late", _key())
    assert [c.name for c in reg.clients()] == ["alice", "c0", "c1", "c2", "c3"]


def test_groups_expiry_disable_remove(reg):
    reg.add_client("alice", _key(), expires_at=2000.0)
    assert reg.set_groups("alice", ["work", "management"]).groups == ("management", "work")
    assert reg.set_groups("alice", []).groups == ()
    assert reg.set_expiry("alice", None).expires_at is None
    alice = reg.set_disabled("alice", True)
    assert alice.disabled and not alice.active(0)
    assert reg.set_expiry("alice", 100.0).expired(100.0)
    for call in (lambda: reg.set_groups("nobody", ["x"]), lambda: reg.remove_client("nobody"),
                 lambda: reg.client("nobody")):
        with pytest.raises(NotFound, match="no client named 'nobody'"):
            call()
    assert reg.remove_client("alice").name == "alice" and reg.clients() == []


def test_revision_counts_changes_not_bookkeeping(reg):
    r0 = reg.revision()
    reg.add_client("alice", _key())
    reg.register_gateway("gw1", endpoint="192.0.2.1")
    assert reg.revision() == r0 + 2
    reg.record_endpoints([(reg.client("alice").public_key, "192.0.2.9:1234", 50.0)], gateway="gw1")
    reg.heartbeat("gw1", now=60.0)
    reg.record_failure("user:bob")
    assert reg.revision() == r0 + 2


def test_snapshot_holds_everything_reconcilers_need(reg):
    reg.add_client("alice", _key(), preshared_key=encode_key(os.urandom(32)), private_key=SERVER_KEY,
                   groups=["work"], expires_at=500.0)
    reg.set_policy('{"acls": []}', now=10.0)
    session = reg.start_session("bob", "alice", gateway="gw1", expires_at=900.0, idle_timeout=1800, now=100.0)
    reg.register_gateway("gw1", endpoint="192.0.2.1:51820", options={"metrics": "127.0.0.1:9586"})
    snap = reg.snapshot()
    assert snap.revision == reg.revision() and snap.settings == SETTINGS
    assert snap.client("alice").groups == ("work",) and snap.client("alice").private_key == SERVER_KEY
    assert snap.policy.text == '{"acls": []}' and snap.policy.version == 1
    assert [s.id for s in snap.sessions] == [session.id]
    assert snap.gateways[0].options == {"metrics": "127.0.0.1:9586"}
    assert snap.next_expiry(100.0) == 500.0 and snap.next_expiry(600.0) is None
    assert [c.name for c in snap.active_clients(100.0)] == ["alice"] and snap.active_clients(500.0) == []
    assert "private_key" not in repr(snap.client("alice")) and SERVER_KEY not in repr(snap)


def test_policy_users_failures_sessions_endpoints_gateways(reg):
    p1 = reg.set_policy("{}", now=1.0)
    p2 = reg.set_policy('{"acls": [] }', now=2.0)
    assert (p1.version, p2.version) == (1, 2) and len(p2.sha256) == 64 and reg.policy() == p2

    u = reg.add_user("bob", "scrypt$abc", totp_secret="JBSWY3DP", groups=["work"], now=5.0)
    assert u.groups == ("work",) and u.created == 5.0
    with pytest.raises(Conflict):
        reg.add_user("bob", "x")
    u = reg.update_user("bob", groups=["management"], disabled=True, totp_secret=None)
    assert u.groups == ("management",) and u.disabled and u.totp_secret is None
    assert u.password_hash == "scrypt$abc"
    for t in (100.0, 110.0, 120.0):
        reg.record_failure("user:bob", now=t)
    assert reg.failures("user:bob", since=105.0) == 2 and reg.failures("client:x", since=0) == 0
    reg.clear_failures("user:bob")
    assert reg.failures("user:bob", since=0) == 0

    s = reg.start_session("bob", "alice", gateway="gw1", expires_at=1000.0, idle_timeout=60.0, now=200.0)
    reg.touch_sessions([(s.id, 250.0, 1000, 2000)])
    assert reg.sessions()[0].rx_bytes == 1000 and reg.sessions()[0].last_activity == 250.0
    ended = reg.end_session(s.id, "kicked", now=300.0)
    assert (ended.ended_at, ended.end_reason) == (300.0, "kicked")
    assert reg.end_session(s.id, "again", now=400.0).end_reason == "kicked"
    assert reg.sessions() == [] and len(reg.sessions(active=False)) == 1
    reg.remove_user("bob")
    with pytest.raises(NotFound):
        reg.user("bob")

    reg.record_endpoints([("k1", "192.0.2.9:1", 10.0), ("k2", "[2001:db8::1]:2", 20.0)], gateway="gw1")
    reg.record_endpoints([("k1", "192.0.2.9:3", 30.0)], gateway="gw2")
    eps = reg.peer_endpoints()
    assert (eps["k1"].endpoint, eps["k1"].gateway) == ("192.0.2.9:3", "gw2")
    assert list(reg.peer_endpoints(seen_since=25.0)) == ["k1"]

    reg.register_gateway("gw1", endpoint="192.0.2.1", now=1.0)
    reg.set_gateway("gw1", ha_role="vrrp", ha_state="backup")
    reg.heartbeat("gw1", ha_state="master", now=7.0)
    g = reg.gateways()[0]
    assert (g.endpoint, g.ha_role, g.ha_state, g.last_heartbeat) == ("192.0.2.1", "vrrp", "master", 7.0)
    with pytest.raises(NotFound):
        reg.heartbeat("nobody")
    reg.remove_gateway("gw1")
    assert reg.gateways() == []


def test_a_change_wakes_a_waiter_on_another_connection(registry_location):
    """PostgreSQL: LISTEN/NOTIFY; SQLite: the revision poll. Within the 2 s the issue allows."""
    writer = open_registry(registry_location)
    writer.initialize(SETTINGS)
    waiter = open_registry(registry_location)
    try:
        since = waiter.revision()
        assert waiter.wait_for_change(since, 0.2) == since  # nothing changed: the timeout ends it
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(waiter.wait_for_change(since, 2.0)))
        t.start()
        time.sleep(0.3)  # let the waiter block first (the test holds either way)
        writer.add_client("alice", _key())
        t.join()
        assert seen == [since + 1]
    finally:
        waiter.close()
        writer.close()


_ADDER = """
import os, sys, time
from server.registry import open_registry
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key
location, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
reg = open_registry(location)
keys = [encode_key(DH_PUBKEY(DH_GENERATE(os.urandom(32)))) for _ in range(30)]
while time.time() < start:
    time.sleep(0.001)
first = time.time()
for i, key in enumerate(keys):
    reg.add_client(f"{tag}{i}", key)
print(first, time.time())
reg.close()
"""


def test_concurrent_add_client_from_two_processes_never_share_an_address(registry_location):
    with open_registry(registry_location) as r:
        r.initialize(ServerSettings(private_key=SERVER_KEY, pools=("10.8.0.0/24", "fd08::/64")))
    start = time.time() + 1.5  # both processes start adding at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER, registry_location, tag, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    windows = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        windows.append([float(x) for x in out.split()])
    with open_registry(registry_location) as r:
        clients = r.clients()
    assert len(clients) == 60
    assert len({c.ipv4 for c in clients}) == 60 and len({c.ipv6 for c in clients}) == 60
    # both really added at once: their time windows overlap
    (a0, a1), (b0, b1) = windows
    assert a0 < b1 and b0 < a1, windows


def test_a_newer_schema_is_refused(registry_location):
    with open_registry(registry_location) as r:
        with r._write(bump=False) as tx:
            tx.run("UPDATE meta SET schema_version = 99")
    with pytest.raises(RegistryError, match="schema version 99, newer"):
        open_registry(registry_location)


# --- backend specifics ------------------------------------------------------------------


def test_sqlite_file_is_private_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "wg0.db"
    with open_registry(str(path)) as r:
        r.initialize(SETTINGS)
        r.add_client("alice", _key())
    for f in tmp_path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    os.chmod(path, 0o644)
    with pytest.raises(RegistryError, match="chmod 600"):
        open_registry(str(path))
    with pytest.raises(RegistryError, match="no registry"):
        open_registry(str(tmp_path / "none.db"), create=False)
    with pytest.raises(RegistryError, match="file path or a postgresql"):
        open_registry("mysql://x/y")


def test_sqlite_busy_writer_is_unavailable_not_a_hang(tmp_path, monkeypatch):
    from server.registry import sqlite

    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
    path = str(tmp_path / "wg0.db")
    holder = open_registry(path)
    holder.initialize(SETTINGS)
    other = open_registry(path)
    try:
        with holder._write():
            with pytest.raises(RegistryUnavailable, match="busy|locked"):
                other.add_client("alice", _key())
        other.add_client("alice", _key())
    finally:
        other.close()
        holder.close()


def test_postgres_stopped_is_a_clear_error_within_seconds():
    from tests.pgserver import PgServer, skip_or_fail

    skip_or_fail()
    with PgServer.started() as pg:
        url = pg.create_database()
        reg = open_registry(url)
        reg.initialize(SETTINGS)
        reg.add_client("alice", _key())
        since = reg.revision()
        assert reg.wait_for_change(since, 0.1) == since
        pg.stop()
        for call in (lambda: reg.add_client("bob", _key()), reg.clients, lambda: reg.wait_for_change(since, 5)):
            with pytest.raises(RegistryUnavailable) as info:
                call()
            message = str(info.value)
            assert message.startswith("registry postgresql://postgres@/") and "\n" not in message
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            open_registry(url)
        pg.start()  # back: the same object connects again
        assert [c.name for c in reg.clients()] == ["alice"]
        reg.close()


def test_postgres_url_password_is_never_shown():
    from server.registry.postgres import redact

    assert redact("postgresql://tunnel:s3cret@db.example:5433/reg?sslmode=require") == \
        "postgresql://tunnel@db.example:5433/reg"
    assert redact("postgresql://u:pw@/reg?host=/run/pg&port=5432&password=pw") == \
        "postgresql://u@/reg?host=/run/pg&port=5432"


def test_missing_psycopg_is_one_line_naming_the_extra(monkeypatch):
    from server.registry import postgres

    monkeypatch.setattr(postgres, "psycopg", None)
    with pytest.raises(RegistryError, match=r"pip install 'tunnel\[postgres\]'"):
        open_registry("postgresql://u@h/db")


@pytest.mark.parametrize("pool", ["10.8.0.0/24", "10.8.0.0/30", "10.8.0.0/31", "10.8.0.7/32", "fd08::/64",
                                  "fd08::/126", "fd08::/127", "fd08::1/128"])
def test_addresses_are_allocated_from_the_pools_hosts_as_ipaddress_lists_them(pool):
    """The allocator steps over integers (10,000 clients); its range is `hosts()`'s."""
    import ipaddress

    from server.registry.sql import _host_range

    net = ipaddress.ip_network(pool)
    hosts = [int(h) for h in net.hosts()] if net.num_addresses <= 256 else None
    first, last = _host_range(net)
    if hosts is not None:
        assert (first, last) == (hosts[0], hosts[-1]) and len(hosts) == last - first + 1
    else:
        assert first == int(next(iter(net.hosts())))
        assert last == int(net.broadcast_address)


def test_a_new_snapshot_shares_the_strings_of_the_one_still_held(reg):
    """A server holds one snapshot (its peers, its policy) while it reads the next: the clients' names,
    keys and addresses are the same objects in both, not a second copy of each for a while."""
    reg.add_client("alice", _key(), preshared_key=_key())
    first = reg.snapshot()
    reg.add_client("bob", _key())
    second = reg.snapshot()
    a1, a2 = first.client("alice"), second.client("alice")
    assert a1 is not a2 and a1 == a2
    for field_name in ("name", "public_key", "preshared_key", "ipv4", "ipv6"):
        assert getattr(a1, field_name) is getattr(a2, field_name), field_name
