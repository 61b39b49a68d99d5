"""Session resumption after a restart, without root: the write schedule, the pacing, and a
restart of one end of an in-memory pair (tunnel.dataplane.fakes) on a fake clock.

The same over real namespaces with wireguard-go: tests/integration/test_restart_netns.py.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tunnel.endpointrecorder import WRITE_INTERVAL, EndpointRecorder, WriteSchedule
from tunnel.endpointstore import EndpointStoreError, FileEndpointStore, SeenEndpoint
from tunnel.protocol import Device, Event
from tunnel.protocol.constants import MESSAGE_HANDSHAKE_INITIATION
from tunnel.protocol.crypto import DH_PUBKEY
from tunnel.resume import (
    RESUME_BURST,
    RESUME_RATE,
    RESUME_WINDOW,
    EndpointKeeper,
    Pacer,
    TokenBucket,
    initiate,
    resume_targets,
)

from .helpers.packets import ipv4_packet
from .helpers.planes import WALL_EPOCH, PlanePair, Side, vnet_plain


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """An EndpointStore in memory: what was saved, call by call; fails while `down`."""

    where = "memory"

    def __init__(self, records=(), clock=None):
        self.records = list(records)
        self.clock = clock
        self.saves: list[list[SeenEndpoint]] = []
        self.saved_at: list[float] = []
        self.down = False
        self.closed = False

    def load(self, seen_since):
        return [r for r in self.records if r.last_seen >= seen_since]

    def save(self, records):
        if self.down:
            raise EndpointStoreError("memory is down")
        self.saves.append(list(records))
        self.saved_at.append(self.clock() if self.clock else 0.0)

    def close(self):
        self.closed = True


class FakePeer:
    def __init__(self, key: bytes, endpoint):
        self.public_key, self.endpoint = key, endpoint


def _key(n: int) -> bytes:
    return n.to_bytes(2, "big") * 16


# -- at most one write a minute per peer ----------------------------------------------------------


def test_schedule_writes_a_peer_at_most_once_a_minute_and_the_newest_record():
    s = WriteSchedule()
    r1 = SeenEndpoint(_key(1), ("192.0.2.1", 1), 1.0)
    assert s.note(r1, 100.0)  # never written: due at once
    assert s.due(100.0) == [r1]
    s.written([r1], 100.0)
    assert s.due(100.0) == [] and s.next_due() is None
    r2 = SeenEndpoint(_key(1), ("192.0.2.2", 2), 2.0)  # roamed 10 s later
    r3 = SeenEndpoint(_key(1), ("192.0.2.3", 3), 3.0)  # and again
    assert not s.note(r2, 110.0) and not s.note(r3, 120.0)
    assert s.due(159.9) == [] and s.next_due() == 100.0 + WRITE_INTERVAL
    assert s.due(160.0) == [r3]  # the newest noted
    s.written([r3], 160.0)
    assert s.pending == {}


def test_recorder_on_a_fake_clock_writes_each_peer_at_most_once_a_minute():
    clock, wall = FakeClock(), FakeClock(WALL_EPOCH)
    store = MemoryStore(clock=clock)
    rec = EndpointRecorder(store, clock=clock, wall_clock=wall)
    peers = [FakePeer(_key(n), ("192.0.2.1", 1000 + n)) for n in range(50)]
    # Ten minutes; every peer handshakes or roams every 7 s; the writer looks every 0.5 s.
    for step in range(1200):
        clock.now += 0.5
        wall.now += 0.5
        if step % 14 == 0:
            for i, p in enumerate(peers):
                if i % 2:
                    p.endpoint = ("192.0.2.1", p.endpoint[1] + 1)
                rec.on_event(Event("roamed" if i % 2 else "handshake_completed", p))
        rec.on_event(Event("handshake_retry", peers[0]))  # not a record
        pause, wait = rec.write_due()
        assert wait is None or wait <= WRITE_INTERVAL
    clock.now += 1
    rec.flush()  # as close() does: the newest of each, whatever its minute
    written: dict[bytes, list[float]] = {}
    for at, batch in zip(store.saved_at, store.saves):
        for r in batch:
            written.setdefault(r.public_key, []).append(at)
    assert len(written) == len(peers)
    for key, times in written.items():
        gaps = [b - a for a, b in zip(times, times[1:-1])]  # the final flush is the one exception
        assert min(gaps) >= WRITE_INTERVAL, gaps
        assert 10 <= len(times) <= 12
    assert {r.endpoint for r in store.saves[-1]} == {p.endpoint for p in peers}
    # Batched: every peer's record went in the same few calls, not one call per peer.
    assert len(store.saves) <= 12


def test_recorder_keeps_records_while_the_store_fails_and_batches_a_burst():
    clock = FakeClock()
    store = MemoryStore()
    rec = EndpointRecorder(store, clock=clock, wall_clock=lambda: WALL_EPOCH)
    store.down = True
    for n in range(1000):
        rec.on_event(Event("handshake_completed", FakePeer(_key(n), ("192.0.2.1", n + 1))))
    pause, _ = rec.write_due()
    assert pause == rec.retry and store.saves == []
    store.down = False
    clock.now += rec.retry
    pause, _ = rec.write_due()
    assert pause == rec.batch_gap and len(store.saves) == 1 and len(store.saves[0]) == 1000
    assert rec.write_due() == (0.0, None)  # nothing pending


def test_recorder_thread_loads_first_writes_at_handshake_and_flushes_at_close():
    store = MemoryStore([SeenEndpoint(_key(1), ("192.0.2.1", 1), time.time() - 10),
                         SeenEndpoint(_key(2), ("192.0.2.2", 2), time.time() - 1000)])
    loaded = []
    rec = EndpointRecorder(store, batch_gap=0.01).start(loaded.append, seen_since=time.time() - RESUME_WINDOW)
    try:
        _wait(lambda: loaded)
        assert [r.public_key for r in loaded[0]] == [_key(1)]
        peer = FakePeer(_key(3), ("192.0.2.3", 3))
        rec.on_event(Event("handshake_completed", peer))
        _wait(lambda: store.saves)  # written at the handshake, not a minute later
        peer.endpoint = ("192.0.2.33", 33)
        rec.on_event(Event("roamed", peer))  # within its minute: waits
        time.sleep(0.1)
        assert len(store.saves) == 1
    finally:
        rec.close()
    assert store.saves[-1][0].endpoint == ("192.0.2.33", 33) and store.closed  # the close wrote it


def _wait(condition, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# -- pacing -------------------------------------------------------------------------------------


def test_token_bucket_rate_and_burst():
    b = TokenBucket(rate=100.0, burst=10, now=0.0)
    assert b.take(50, 0.0) == 10  # starts full
    assert b.take(50, 0.0) == 0 and b.wait(10) == pytest.approx(0.1)
    assert b.take(50, 0.05) == 5
    assert b.take(50, 10.0) == 10  # never more than the burst saved up


def test_ten_thousand_peers_are_paced_on_a_fake_clock():
    clock = FakeClock(0.0)
    pacer = Pacer(lambda fn: None, lambda batch: None, clock=clock)
    pacer.add([(_key(n), ("192.0.2.1", n + 1)) for n in range(10_000)])
    at: list[tuple[float, int]] = []
    while True:
        batch, wait = pacer.next_batch(clock.now)
        if batch:
            at.append((clock.now, len(batch)))
        if not wait and not batch:
            break
        clock.now += wait or 0.001
    assert sum(n for _, n in at) == 10_000
    assert max(n for _, n in at) == RESUME_BURST
    # In any 100 ms, no more than the rate allows plus one burst.
    per_window: dict[int, int] = {}
    for t, n in at:
        per_window[int(t / 0.1)] = per_window.get(int(t / 0.1), 0) + n
    assert max(per_window.values()) <= RESUME_RATE * 0.1 + RESUME_BURST
    assert 10_000 / RESUME_RATE - 1 <= at[-1][0] <= 10_000 / RESUME_RATE + 1


def test_pacer_thread_waits_for_the_loop_to_run_each_batch():
    posted: list = []
    ran: list = []
    pacer = Pacer(posted.append, ran.append, rate=1e6, burst=2).start()
    try:
        pacer.add([(_key(n), None) for n in range(5)])
        _wait(lambda: posted)
        time.sleep(0.1)
        assert len(posted) == 1  # the loop has not run it: nothing more is handed in
        while len(ran) < 3:
            _wait(lambda: posted)
            posted.pop(0)()  # the loop's turn
        assert [len(b) for b in ran] == [2, 2, 1] and pacer.handed == 5
    finally:
        pacer.close()


# -- whom, and how ----------------------------------------------------------------------------------


def test_targets_configured_first_then_stored_newest_first_once_each():
    stored = [SeenEndpoint(_key(2), ("192.0.2.2", 2), 10.0), SeenEndpoint(_key(3), ("192.0.2.3", 3), 30.0),
              SeenEndpoint(_key(1), ("192.0.2.1", 1), 50.0), SeenEndpoint(_key(9), ("192.0.2.9", 9), 60.0)]
    assert resume_targets([_key(1)], stored, peers={_key(1), _key(2), _key(3)}) == [
        (_key(1), None), (_key(3), ("192.0.2.3", 3)), (_key(2), ("192.0.2.2", 2))]


def test_initiate_skips_peers_with_a_session_and_keeps_endpoints_they_have():
    pair = PlanePair(seed=3)
    try:
        a, b = pair.sides
        stranger = b.device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.9.9.9/32"])
        gone = b.device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.9.9.8/32"])
        b.device.remove_peer(gone.public_key)
        # a has a configured endpoint (b's); a stored one must not replace it.
        assert initiate(a.device, a.plane.perform, [(b.device.public_key, ("192.0.2.99", 9))], pair.clock.now) == 1
        sent = a.bind.take_sent()
        assert a.peer_of(b).endpoint == b.endpoint and [(e, d[0]) for e, d in sent] == [
            (b.endpoint, MESSAGE_HANDSHAKE_INITIATION)]
        pair.settle()
        assert a.peer_of(b).current is not None
        b.bind.take_sent()
        targets = [(a.device.public_key, a.endpoint), (gone.public_key, ("192.0.2.8", 8)),
                   (stranger.public_key, None)]  # b has a session with a; the stranger has no endpoint at all
        assert initiate(b.device, b.plane.perform, targets, pair.clock.now) == 0
        assert b.bind.take_sent() == []
    finally:
        pair.close()


# -- a restart, in memory ---------------------------------------------------------------------------


def test_a_restarted_server_resumes_a_client_that_keeps_sending(tmp_path):
    """b is a server (no Endpoint for a); a client that only sends. b dies and comes back with the
    same key: a's packets stay lost until b initiates to where the file says a was."""
    pair = PlanePair(seed=5)
    path = str(tmp_path / "wgb.endpoints.json")
    clock = pair.clock
    try:
        a, b = pair.sides
        rec = EndpointRecorder(FileEndpointStore(path, wall_clock=clock.wall), clock=clock, wall_clock=clock.wall)
        b.plane.on_event = rec.on_event
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"before")))
        pair.settle()
        assert b.packets() == [ipv4_packet(a.address4, b.address4, b"before")]
        rec.write_due()  # the recorder's thread, at the handshake
        pair.advance(20)

        # kill -9: b's state is gone; a's session with it is not.
        b.close()
        b = pair.b = Side("b", 2, pair.net, clock, 5)
        b.device.add_peer(a.device.public_key, allowed_ips=[f"{a.address4}/32"], name="a")
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"lost")))
        pair.settle()
        assert b.packets() == [] and b.counters.drops["unknown_receiver"] == 1

        stored = FileEndpointStore(path, wall_clock=clock.wall).load(clock.wall() - RESUME_WINDOW)
        targets = resume_targets([], stored, b.device.peers)
        assert targets == [(a.device.public_key, a.endpoint)]
        assert initiate(b.device, b.plane.perform, targets, clock.now) == 1
        pair.settle()
        a.tun.inject(vnet_plain(ipv4_packet(a.address4, b.address4, b"after")))
        pair.settle()
        assert b.packets() == [ipv4_packet(a.address4, b.address4, b"after")]
    finally:
        pair.close()


class _Plane:
    """What the keeper asks of the data plane; the test plays the loop's thread."""

    def __init__(self, clock):
        self.calls: list = []
        self.clock = clock
        self.lock = threading.Lock()
        self.performed: list = []

    def call_soon_threadsafe(self, fn):
        with self.lock:
            self.calls.append(fn)

    def perform(self, actions, now):
        self.performed.extend(actions)

    def turn(self):
        with self.lock:
            calls, self.calls = self.calls, []
        for fn in calls:
            fn()


class _Interface:
    def __init__(self, device, clock):
        self.name = "wgk"
        self.device = device
        self.plane = _Plane(clock)
        self.event_listeners: list = []


def test_keeper_initiates_to_configured_then_stored_peers_and_records_events():
    now = time.time()
    device = Device(os.urandom(32), wall_epoch=now - time.monotonic())
    server = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.1.0.0/24"], endpoint=("192.0.2.1", 51820))
    roamer = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.2.0.2/32"])
    quiet = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.2.0.3/32"])
    store = MemoryStore([SeenEndpoint(server.public_key, ("198.51.100.1", 1), now - 10),  # its Endpoint stands
                         SeenEndpoint(roamer.public_key, ("198.51.100.7", 4444), now - 30),
                         SeenEndpoint(quiet.public_key, ("198.51.100.8", 5555), now - RESUME_WINDOW - 60)])
    iface = _Interface(device, time.monotonic)
    keeper = EndpointKeeper(iface, store)
    try:
        def initiated():
            iface.plane.turn()
            return {a.endpoint for a in iface.plane.performed if type(a).__name__ == "SendDatagram"}

        _wait(lambda: initiated() == {("192.0.2.1", 51820), ("198.51.100.7", 4444)})
        assert roamer.endpoint == ("198.51.100.7", 4444) and quiet.endpoint is None
        assert server.endpoint == ("192.0.2.1", 51820) and keeper.started == 2
        assert iface.event_listeners == [keeper.recorder.on_event]
        iface.event_listeners[0](Event("handshake_completed", roamer))
        _wait(lambda: store.saves)
        assert store.saves[0][0].public_key == roamer.public_key
    finally:
        keeper.close()
    assert store.closed
