"""Sessions resumed after a restart: at start, we initiate to the peers that were talking to us.

A restarted daemon has no sessions. A peer that sends keeps using its old
one, which we no longer know, until its own timers give up on it
(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, ~15 s, then a handshake): a stock
client freezes for ~16 s. Either side may initiate (nothing changes on the
wire), so we do, at start:
- to every peer with an Endpoint in the config (a client's server; with a
  PersistentKeepalive this is what wg-quick's first keepalive did anyway);
- to every other peer (a road warrior) whose last authenticated endpoint the
  endpoint store (tunnel/endpointstore.py) saw within RESUME_WINDOW, at that
  endpoint, the most recently seen first.
The recorder (tunnel/endpointrecorder.py) keeps that store up to date while
we run; `EndpointKeeper` is the interface's service that runs both.

A standby that takes over another instance's address (a gateway becoming
the holder of a virtual IP, server/ha) is in the same place as a restarted
daemon, except that its peers may hold sessions of ours they no longer use:
`take_over` starts each afresh, handed in batches by the same Pacer.

Rules kept here:
- initiations are paced by a token bucket (RESUME_RATE a second, bursts of
  RESUME_BURST), so 10,000 peers do not burst: each costs two X25519 (the
  ephemeral key and `es`) and the response it brings back two more;
- the device is touched only in the data plane's thread: the pacing thread
  hands each batch in with call_soon_threadsafe and posts the next only
  once the loop has run it, so a busy loop never finds batches piled up;
- a peer that already has a session or a handshake under way when its turn
  comes (it came back by itself), or was removed, is skipped; a stored
  endpoint never replaces one the peer has (from its config, or learnt
  since start): the config is the user's word, and a fresh one is fresher;
- the core does the rest as for any initiation (retries for
  REKEY_ATTEMPT_TIME, then gives up): a peer that is gone costs what a
  configured Endpoint that is down costs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Container, Iterable, Sequence

from .endpointrecorder import EndpointRecorder
from .endpointstore import EndpointStore, FileEndpointStore, SeenEndpoint, default_path
from .protocol.constants import REJECT_AFTER_TIME

log = logging.getLogger("tunnel")

# A peer with traffic handshakes at least every REJECT_AFTER_TIME (180 s: its
# keys are refused after that), and its record may be up to a minute older
# than its last handshake (WRITE_INTERVAL): any peer that still had a session
# when we stopped was seen within 240 s of it. 300 s covers that and a
# restart that takes a minute; a peer quiet for longer had no session left,
# and it handshakes by itself when it has something to send.
RESUME_WINDOW = REJECT_AFTER_TIME + 120.0
# Measured (bench/restart.py --cost, a 2-core VM): an initiation costs the
# loop ~0.13 ms of CPU, the response it brings back ~0.15 ms; 500 a second is
# ~15% of a core, 10,000 peers in 20 s, and a batch of 10 holds the loop
# ~1.5 ms (what a packet in flight may wait).
RESUME_RATE = 500.0  # initiations a second
RESUME_BURST = 10  # initiations handed to the loop at once


class TokenBucket:
    """RATE tokens a second, at most BURST saved up; starts full (no clock of its own)."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def take(self, want: int, now: float) -> int:
        """Up to WANT tokens, as many as there are now."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        n = min(want, int(self.tokens))
        self.tokens -= n
        return n

    def wait(self, want: int) -> float:
        """Seconds until WANT tokens (at most BURST) are there, from the last `take`."""
        missing = min(want, self.burst) - self.tokens
        return max(0.0, missing / self.rate)


Target = tuple[bytes, "tuple | None"]  # a peer's public key, and the stored endpoint to use if it has none


def resume_targets(configured: Iterable[bytes], stored: Sequence[SeenEndpoint],
                   peers: Container[bytes] | None = None) -> list[Target]:
    """Whom to initiate to, in order: the peers with a configured endpoint, then the stored
    records of other peers (of PEERS, if given), most recently seen first, one each."""
    out: list[Target] = [(key, None) for key in configured]
    taken = {key for key, _ in out}
    for r in sorted(stored, key=lambda r: r.last_seen, reverse=True):
        if (peers is None or r.public_key in peers) and r.public_key not in taken:
            taken.add(r.public_key)
            out.append((r.public_key, r.endpoint))
    return out


def initiate(device, perform: Callable[[list, float], None], targets: Sequence[Target], now: float) -> int:
    """In the loop's thread: start a handshake with each target that still needs one; how many were started."""
    started = 0
    for key, stored in targets:
        peer = device.peers.get(key)
        if peer is None or peer.removed or peer.current is not None or peer.next is not None:
            continue
        if peer.endpoint is None:
            if stored is None:
                continue
            peer.endpoint = stored
        perform(device.initiate(peer, now), now)
        started += 1
    return started


def take_over(device, perform: Callable[[list, float], None], targets: Sequence[Target], since: float,
              now: float) -> int:
    """In the loop's thread: sessions another instance with our key served (a standby gateway that
    has just taken over its address) start afresh, each at its stored endpoint; how many were started.

    Unlike `initiate` a peer's session here is no reason to skip it: it may be
    one the peer has long replaced with the other instance's, which it now
    seals with (and our packets sealed with ours would be dropped). So each
    target gets what a switch of endpoint gives (Peer.switch_endpoint: what we
    send waits for the new session, late packets on the old one still open),
    except a peer that completed a handshake with us at or after SINCE (the
    moment we took over): it came to us by itself.
    """
    started = 0
    for key, stored in targets:
        peer = device.peers.get(key)
        if peer is None or peer.removed:
            continue
        if peer.last_handshake is not None and peer.last_handshake >= since:
            continue
        if peer.last_sent_initiation is not None and peer.last_sent_initiation >= since:
            continue
        endpoint = stored if stored is not None else peer.endpoint
        if endpoint is None:
            continue
        perform(device.switch_endpoint(peer, endpoint, now), now)
        started += 1
    return started


class Pacer:
    """Hands targets to the loop in batches at the bucket's pace, from a thread of its own."""

    def __init__(self, run_in_loop: Callable[[Callable[[], None]], None], start_batch: Callable[[list], None], *,
                 clock: Callable[[], float] = time.monotonic, rate: float = RESUME_RATE, burst: int = RESUME_BURST):
        self.run_in_loop = run_in_loop
        self.start_batch = start_batch  # runs in the loop's thread
        self.clock = clock
        self.bucket = TokenBucket(rate, burst, clock())
        self.burst = burst
        self._queue: list[Target] = []
        self._lock = threading.Lock()
        self._more = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resume", daemon=True)
        self.handed = 0  # targets handed to the loop so far

    def add(self, targets: Sequence[Target]) -> None:
        with self._lock:
            self._queue.extend(targets)
        self._more.set()

    def start(self) -> "Pacer":
        self._thread.start()
        return self

    def next_batch(self, now: float) -> tuple[list[Target], float]:
        """The batch the bucket allows now, and how long to wait before the next one."""
        with self._lock:
            n = self.bucket.take(min(self.burst, len(self._queue)), now)
            batch, self._queue[:n] = self._queue[:n], []
            left = len(self._queue)
        return batch, (self.bucket.wait(min(self.burst, left)) if left else 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._more.clear()  # before looking: an `add` made meanwhile wakes the wait below
            batch, wait = self.next_batch(self.clock())
            if batch:
                done = threading.Event()

                def run(batch=batch, done=done) -> None:
                    try:
                        self.start_batch(batch)
                    finally:
                        done.set()

                self.run_in_loop(run)
                self.handed += len(batch)
                while not done.wait(0.5):  # back-pressure: the loop ran the last batch first
                    if self._stop.is_set():
                        return
            if wait:
                self._stop.wait(wait)
            elif not batch:
                self._more.wait()

    def close(self) -> None:
        self._stop.set()
        self._more.set()
        if self._thread.is_alive():
            self._thread.join(2.0)


class EndpointKeeper:
    """The interface's service: resume at start, record while running. `close()` stops both."""

    def __init__(self, interface, store: EndpointStore, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, window: float = RESUME_WINDOW):
        self.interface = interface
        self.store = store
        self.window = window
        self.recorder = EndpointRecorder(store, ifname=interface.name, clock=clock, wall_clock=wall_clock)
        plane, device = interface.plane, interface.device
        self.started = 0  # handshakes started by resumption (tests, the log)
        self.pacer = Pacer(plane.call_soon_threadsafe, self._start_batch, clock=clock)
        # Read before the loop runs (this is the only thread now): who has an Endpoint of its own.
        configured = [key for key, peer in device.peers.items() if peer.endpoint is not None]
        self.configured = frozenset(configured)
        self.pacer.add(resume_targets(configured, ()))
        self.pacer.start()
        interface.event_listeners.append(self.recorder.on_event)
        self.recorder.start(self._loaded, seen_since=wall_clock() - window)

    def _start_batch(self, batch: list) -> None:
        plane = self.interface.plane
        self.started += initiate(self.interface.device, plane.perform, batch, plane.clock())

    def _loaded(self, records: list[SeenEndpoint]) -> None:
        """In the recorder's thread: the store's recent records, for the pacer (picked in the loop's
        thread, which owns the peers)."""
        records = [r for r in records if r.public_key not in self.configured]  # already under way
        if not records:
            return
        device, name, where = self.interface.device, self.interface.name, self.store.where

        def pick() -> None:
            targets = resume_targets((), records, device.peers)
            if not targets:
                return
            log.info("%s: resuming %d peer(s) seen in the last %.0f s (from %s)", name, len(targets),
                     self.window, where)
            self.pacer.add(targets)

        self.interface.plane.call_soon_threadsafe(pick)

    def close(self) -> None:
        self.pacer.close()
        self.recorder.close()


def start(interface, roles=()) -> EndpointKeeper:
    """The keeper for INTERFACE, with the first store a role hands in (Role.endpoint_store), else the file."""
    store = None
    for role in roles:
        store = role.endpoint_store(interface)
        if store is not None:
            break
    if store is None:
        store = FileEndpointStore(default_path(interface.name, interface.options.state_dir))
    return EndpointKeeper(interface, store)
