"""The reconciler against a real registry (SQLite and PostgreSQL) and an in-memory Device.

The data plane is a thread that runs what `call_soon_threadsafe` hands it, as
the real loop does; the device is the protocol's own Device. No root needed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from server.reconcile import DesiredPeer, Reconciler, diff_request
from server.registry import ServerSettings, open_registry
from tunnel.protocol import Device
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, decode_key, encode_key

SERVER_PRIVATE = DH_GENERATE(os.urandom(32))
SETTINGS = ServerSettings(private_key=encode_key(SERVER_PRIVATE), pools=("10.8.0.0/24", "fd08::/64"))


class LoopThread:
    """The data plane's thread as far as the reconciler sees it."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.clock = time.monotonic
        self.stats = None

    def _run(self):
        while True:
            fn = self.calls.get()
            if fn is None:
                return
            fn()

    def call_soon_threadsafe(self, fn):
        self.calls.put(fn)

    def perform(self, actions, now):
        pass

    def close(self):
        self.calls.put(None)
        self.thread.join()


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def _interface(device, plane):
    return SimpleNamespace(plane=plane, device=device, name="wgr",
                           config=SimpleNamespace(interface=SimpleNamespace(private_key=SERVER_PRIVATE)),
                           udp=SimpleNamespace(port=51820), fwmark=0)


def _key():
    return encode_key(DH_PUBKEY(DH_GENERATE(os.urandom(32))))


def _wait(condition, timeout=2.0):
    """Poll CONDITION until true; the timeout is the issue's bound for a change to reach a gateway."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def running(registry_location):
    """(admin registry, device, reconciler, clock) with the reconciler running on its own registry object."""
    admin = open_registry(registry_location)
    admin.initialize(SETTINGS)
    device = Device(SERVER_PRIVATE, wall_epoch=time.time() - time.monotonic())
    plane = LoopThread()
    clock = Clock()
    rec = Reconciler(lambda: open_registry(registry_location), clock=clock, name="wgr")
    rec.start(_interface(device, plane))
    assert rec.wait_passes(1, 10)
    yield admin, device, rec, clock
    rec.close()
    plane.close()
    admin.close()


def _names(device):
    return sorted(p.name for p in device.peers.values())


def test_a_change_on_another_connection_reaches_the_device_within_2s(running):
    admin, device, rec, clock = running
    alice = admin.add_client("alice", _key(), preshared_key=encode_key(os.urandom(32)))
    assert _wait(lambda: _names(device) == ["alice"])
    peer = device.peers[decode_key(alice.public_key)]
    assert device.allowed_ips.prefixes(peer) == ["10.8.0.2/32", "fd08::2/128"]
    assert bytes(peer.handshake.preshared_key) == decode_key(alice.preshared_key)

    # Another client, a group change: alice's peer is the same object (its session untouched).
    admin.add_client("bob", _key())
    admin.set_groups("alice", ["work"])
    assert _wait(lambda: _names(device) == ["alice", "bob"])
    assert device.peers[decode_key(alice.public_key)] is peer

    admin.remove_client("alice")
    assert _wait(lambda: _names(device) == ["bob"])
    assert peer.removed
    admin.set_disabled("bob", True)
    assert _wait(lambda: device.peers == {})


def test_expiry_removes_the_peer_when_its_time_comes(running):
    admin, device, rec, clock = running
    admin.add_client("temp", _key(), expires_at=clock.now + 60)
    admin.add_client("staff", _key())
    assert _wait(lambda: _names(device) == ["staff", "temp"])
    clock.now += 61  # the reconciler's next wake-up (at most 1 s) sees it expired
    assert _wait(lambda: _names(device) == ["staff"], timeout=10.0)  # a bound against hangs on a busy machine
    assert admin.client("temp").expired(clock.now)  # still in the registry: list shows it expired


def test_a_pass_is_idempotent_and_leaves_runtime_peers_alone(running):
    admin, device, rec, clock = running
    admin.add_client("alice", _key())
    assert _wait(lambda: _names(device) == ["alice"])
    # a peer added at run time (`wg set`) that the registry never held
    manual = DH_PUBKEY(DH_GENERATE(os.urandom(32)))
    done = threading.Event()
    rec._plane.call_soon_threadsafe(lambda: (device.add_peer(manual, allowed_ips=["10.8.0.50/32"], name="m"),
                                             done.set()))
    done.wait(5)
    snap = admin.snapshot()
    assert not rec.apply(snap, clock.now)  # nothing to change, twice
    assert not rec.apply(snap, clock.now)
    assert manual in device.peers and _names(device) == ["alice", "m"]


def test_diff_updates_only_what_differs():
    device = Device(SERVER_PRIVATE, wall_epoch=0.0)
    a, b, c = (DH_PUBKEY(DH_GENERATE(os.urandom(32))) for _ in range(3))
    device.add_peer(a, allowed_ips=["10.8.0.2/32"], name="a")
    device.add_peer(b, allowed_ips=["10.8.0.3/32"], name="b")
    psk = os.urandom(32)
    desired = {a: DesiredPeer("a", bytes(32), ("10.8.0.2/32",)),
               b: DesiredPeer("b", psk, ("10.8.0.9/32",)),
               c: DesiredPeer("c", bytes(32), ("10.8.0.4/32",))}
    req, changes = diff_request(device, desired, managed={a, b})
    assert (changes.added, changes.updated, changes.removed) == (["c"], ["b"], [])
    change_b = next(x for x in req.peers if x.public_key == b)
    assert change_b.preshared_key == psk and change_b.allowed_ips == ["10.8.0.9/32"] and change_b.replace_allowed_ips
    req, changes = diff_request(device, {}, managed={a})
    assert changes.removed == ["a"] and len(req.peers) == 1 and req.peers[0].remove


def test_a_pass_compares_only_what_changed_and_a_full_one_repairs_the_rest(running, monkeypatch):
    """10,000 clients (issue 9, item 14): a registry change costs the loop the peers it changed; every PERIOD
    a full comparison puts back what a `wg set` changed in a managed peer."""
    import server.reconcile as reconcile

    admin, device, rec, clock = running
    admin.add_client("alice", _key())
    admin.add_client("bob", _key())
    assert _wait(lambda: _names(device) == ["alice", "bob"])
    alice = device.peers[decode_key(admin.client("alice").public_key)]
    done = threading.Event()
    rec._plane.call_soon_threadsafe(lambda: (device.allowed_ips.remove_value(alice), done.set()))  # as `wg set`
    done.wait(5)
    compared = []
    real = reconcile.diff_request
    monkeypatch.setattr(reconcile, "diff_request", lambda dev, want, managed, keys=None: (
        compared.append(None if keys is None else sorted(want[k].name for k in keys if k in want)),
        real(dev, want, managed, keys))[1])
    admin.add_client("carol", _key())
    assert _wait(lambda: _names(device) == ["alice", "bob", "carol"])
    assert ["carol"] in compared and None not in compared  # carol alone; alice's drift not looked at
    assert device.allowed_ips.prefixes(alice) == []
    rec._full_at -= reconcile.PERIOD  # as if PERIOD seconds had passed
    rec.apply(admin.snapshot(), clock.now)
    assert None in compared  # the full comparison
    assert device.allowed_ips.prefixes(alice) == ["10.8.0.2/32", "fd08::2/128"]


def test_listeners_get_every_snapshot(running):
    admin, device, rec, clock = running
    seen = []
    rec.add_listener(lambda snap, now: seen.append((snap.revision, now)))
    rec.add_listener(lambda snap, now: 1 / 0)  # a broken listener does not stop the others
    admin.add_client("alice", _key())
    revision = admin.revision()
    assert _wait(lambda: any(r == revision for r, _ in seen))
    assert _names(device) == ["alice"]


def test_a_policy_and_sessions_from_another_connection_reach_listeners_within_2s(running):
    """What the policy and session features listen for travels as every other change does."""
    admin, device, rec, clock = running
    seen = []
    rec.add_listener(lambda snap, now: seen.append(snap))
    admin.add_client("alice", _key())
    admin.add_user("ann", "hash")
    policy = admin.set_policy("group work -> 10.60.0.0/24\n")
    assert _wait(lambda: seen and seen[-1].policy == policy)
    session = admin.start_session("ann", "alice", gateway="gw2")
    assert _wait(lambda: [x.id for x in seen[-1].sessions] == [session.id])
    admin.end_session(session.id, "logout")
    assert _wait(lambda: seen[-1].sessions == ())


def test_a_listener_is_called_again_when_it_asks(running):
    admin, device, rec, clock = running
    calls = []

    def session_ends(snap, now):  # as a session listener would: "call me when this one ends"
        calls.append(now)
        return clock.now + 100 if len(calls) == 1 else None

    rec.add_listener(session_ends)
    admin.add_client("alice", _key())
    assert _wait(lambda: calls)
    time.sleep(1.5)  # two of the thread's waits: nothing is due yet
    assert len(calls) == 1
    clock.now += 101
    assert _wait(lambda: len(calls) == 2)
    time.sleep(1.5)
    assert len(calls) == 2  # it asked for nothing more


def test_postgres_down_keeps_serving_expires_on_time_and_catches_up():
    from tests.pgserver import PgServer, skip_or_fail

    skip_or_fail()
    with PgServer.started() as pg:
        url = pg.create_database()
        admin = open_registry(url)
        admin.initialize(SETTINGS)
        admin.add_client("staff", _key())
        clock = Clock()
        admin.add_client("temp", _key(), expires_at=clock.now + 60)
        device = Device(SERVER_PRIVATE, wall_epoch=0.0)
        plane = LoopThread()
        rec = Reconciler(lambda: open_registry(url), clock=clock, name="wgr")
        woken = []
        rec.add_listener(lambda snap, now: woken.append((snap.revision, now)) or now + 200)
        rec.start(_interface(device, plane))
        try:
            assert _wait(lambda: _names(device) == ["staff", "temp"], 10)
            pg.stop()
            clock.now += 61  # expires while the registry is down: the last snapshot still says when
            assert _wait(lambda: _names(device) == ["staff"], 10)
            assert _wait(lambda: woken[-1][1] == clock.now)  # listeners heard of it too
            revision = woken[-1][0]
            clock.now += 201  # and a listener's own time comes while it is still down
            assert _wait(lambda: woken[-1][1] == clock.now, 10) and woken[-1][0] == revision
            pg.start()
            admin.add_client("late", _key())  # the admin's connection comes back by itself
            assert _wait(lambda: _names(device) == ["late", "staff"], 15)
        finally:
            rec.close()
            plane.close()
            admin.close()


def test_an_expiry_that_passes_during_a_pass_is_not_left_to_the_periodic_pass(running):
    """The clock moves past a client's expiry between the pass that installed it and the
    reconciler's look at what is due next: it is removed at once, not PERIOD (30 s) later."""
    admin, device, rec, clock = running
    original = rec._pass
    moved = []

    def pass_then_time_moves(snap):
        original(snap)
        if not moved and any(c.name == "temp" for c in snap.clients):
            moved.append(True)
            clock.now += 61

    rec._pass = pass_then_time_moves
    admin.add_client("staff", _key())
    admin.add_client("temp", _key(), expires_at=clock.now + 60)
    assert _wait(lambda: bool(moved), timeout=10.0)
    assert _wait(lambda: _names(device) == ["staff"], timeout=10.0)  # well before PERIOD
