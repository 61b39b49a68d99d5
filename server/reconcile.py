"""The running server follows the registry: its peers are the registry's active clients.

A thread of its own waits for changes (registry.wait_for_change: PostgreSQL's
NOTIFY, SQLite's poll) and, at start, after every new revision, when a
client's expiry comes, every PERIOD seconds and after a lost registry,
computes the desired peers from one snapshot and hands the *differences* to
the data plane's thread, where they are applied with the same code the
control socket's `set` runs (uapi.apply_set). Listeners (policy sets,
sessions, shaping) get the same snapshot after each pass, online or not; a
listener returns the wall time it wants to be called again at (a session's
end, an idle timeout) or None, and a pass comes then whatever else happens.

Rules kept here:
- idempotent: a pass that finds nothing different changes nothing; a peer
  whose key, PSK, allowed IPs and name are unchanged is never touched, so
  its session, endpoint and counters go on;
- only registry peers are managed: a peer added at run time with `wg set`
  whose key the registry never held is left alone;
- the device is read and changed only in the data plane's thread
  (call_soon_threadsafe); this thread only reads the registry;
- an unreachable registry is logged once, the last snapshot keeps serving
  (expiries still apply) and the next pass after it returns is a full one;
- the clock (`clock`, wall time) is injected: tests run expiry without waiting;
- 10,000 clients cost the data plane's thread what changed, not 10,000:
  keys decoded and prefixes parsed are kept between passes for clients
  that did not change, a pass compares only the peers whose desired state
  changed since the last one applied, and every PERIOD seconds one full
  comparison puts back what a `wg set` changed in a managed peer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from server.registry import Registry, RegistryError, RegistryUnavailable, Snapshot
from tunnel import memory
from tunnel.protocol.constants import KEY_LEN
from tunnel.protocol.allowedips import prefix_set
from tunnel.protocol.crypto import decode_key
from tunnel.uapi import Context, PeerChange, SetRequest, apply_set

log = logging.getLogger("tunnel")

PERIOD = 30.0  # seconds between passes with no change and no expiry due
MAX_WAIT = 1.0  # one wait_for_change at most this long, so close() is quick
RETRY = (1.0, 2.0, 5.0, 10.0)  # seconds between attempts while the registry is unreachable
APPLY_TIMEOUT = 10.0


@dataclass(frozen=True)
class DesiredPeer:
    name: str
    preshared_key: bytes = field(repr=False)  # all zero: none
    allowed_ips: tuple[str, ...]
    # allowed_ips parsed here, in the reconciler's thread, so the data-plane loop
    # compares 10,000 peers without formatting a prefix (AllowedIPs.prefix_set).
    prefixes: frozenset = field(default=frozenset(), compare=False, repr=False)


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)

    def __str__(self) -> str:
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.updated)} updated"


def desired_peers(snap: Snapshot, now: float, cache: dict | None = None) -> dict[bytes, DesiredPeer]:
    """The peers the active clients of SNAP make at NOW: public key -> DesiredPeer.

    CACHE, a dict the caller keeps from pass to pass, hands back the same
    DesiredPeer object (and the key decoded) for a client that did not change.
    """
    out = {}
    fresh = {}
    for c in snap.active_clients(now):
        signature = (c.public_key, c.preshared_key, c.name, c.ipv4, c.ipv6)
        hit = cache.get(signature) if cache is not None else None
        if hit is None:
            psk = decode_key(c.preshared_key) if c.preshared_key else bytes(KEY_LEN)
            addresses = tuple(c.addresses)
            hit = (decode_key(c.public_key), DesiredPeer(c.name, psk, addresses, prefix_set(addresses)))
        fresh[signature] = hit
        out[hit[0]] = hit[1]
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    return out


def diff_request(device, desired: dict[bytes, DesiredPeer], managed: set[bytes], keys=None):
    """The uapi set request that makes DEVICE's managed peers equal DESIRED, and what it does.

    Runs in the data-plane loop: a few attribute reads and set comparisons a
    peer, nothing formatted or parsed. KEYS limits it to those peers (the
    ones whose desired state changed); None compares them all.
    """
    req, changes = SetRequest(), Changes()
    allowed = device.allowed_ips
    if keys is None:
        present = list(device.peers.items())
        wanted = desired.items()
    else:
        present = [(k, device.peers[k]) for k in keys if k in device.peers]
        wanted = [(k, desired[k]) for k in keys if k in desired]
    for key, peer in present:
        if key in managed and key not in desired:
            req.peers.append(PeerChange(key, remove=True))
            changes.removed.append(peer.name or "?")
    for key, want in wanted:
        peer = device.peers.get(key)
        if peer is None:
            req.peers.append(PeerChange(key, preshared_key=want.preshared_key, replace_allowed_ips=True,
                                        allowed_ips=list(want.allowed_ips), name=want.name))
            changes.added.append(want.name)
            continue
        psk = peer.handshake.preshared_key != want.preshared_key
        ips = allowed.prefix_set(peer) != (want.prefixes or prefix_set(want.allowed_ips))
        name = peer.name != want.name
        if not (psk or ips or name):
            continue
        change = PeerChange(key)
        if psk:
            change.preshared_key = want.preshared_key
        if ips:
            change.replace_allowed_ips = True
            change.allowed_ips = list(want.allowed_ips)
        if name:
            change.name = want.name
        req.peers.append(change)
        changes.updated.append(want.name)
    return req, changes


class Reconciler:
    """Start with `start(interface)` (an Interface service); `close()` stops it."""

    def __init__(self, opener: Callable[[], Registry], *, registry: Registry | None = None,
                 snapshot: Snapshot | None = None, on_snapshot: Callable[[Snapshot, float], None] | None = None,
                 clock: Callable[[], float] = time.time, name: str = "server"):
        self._open = opener
        self.registry = registry
        self.snapshot = snapshot
        self._publish = on_snapshot
        self._clock = clock
        self.name = name
        self._listeners: list[Callable[[Snapshot, float], float | None]] = []
        self._wake_at: float | None = None  # the earliest time a listener asked to be called again
        self._passed_at = float("-inf")  # the clock as the last pass saw it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._managed: set[bytes] = set()
        self._active: frozenset[str] = frozenset()  # client names the last pass served
        self._cache: dict = {}  # desired_peers' memory of unchanged clients
        self._decoded: dict[str, bytes] = {}  # client public keys, base64 -> raw
        self._applied: dict[bytes, DesiredPeer] | None = None  # what the last pass made the device hold
        self._full_at = 0.0  # monotonic time of the last full comparison
        self._plane = None
        self._ctx = None
        self.passes = 0  # completed passes (tests wait on it)
        self._changed = threading.Condition()

    def add_listener(self, fn: Callable[[Snapshot, float], float | None]) -> None:
        """fn(snapshot, now) after every pass, in the reconciler's thread; exceptions are logged.

        It may return a wall time after `now` at which it wants another pass
        (with the same snapshot if nothing changed, the registry's last one
        while it is unreachable); None if it needs none.
        """
        self._listeners.append(fn)

    # -- as a service of the running interface ---------------------------------------

    def start(self, interface) -> "Reconciler":
        plane = interface.plane
        self._plane = plane
        self._ctx = Context(device=interface.device, private_key=interface.config.interface.private_key,
                            listen_port=interface.udp.port, fwmark=interface.fwmark or 0, now=plane.clock,
                            perform=plane.perform, stats=plane.stats, name=interface.name)
        self.name = interface.name
        # The peers it starts with came from IFACE.conf, generated from the registry: ours.
        self._managed = set(interface.device.peers)
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(APPLY_TIMEOUT + MAX_WAIT + 5)
        if self.registry is not None:
            try:
                self.registry.close()
            except RegistryError:
                pass

    # -- one pass ---------------------------------------------------------------------

    def apply(self, snap: Snapshot, now: float) -> Changes:
        """Make the interface's peers what SNAP says at NOW; the differences applied."""
        desired = desired_peers(snap, now, self._cache)
        self._active = frozenset(p.name for p in desired.values())
        known = self._keys(snap)
        self._managed |= set(desired) | set(known.values())
        applied = self._applied
        keys = None  # all: the first pass, and every PERIOD seconds (a `wg set` may have changed a peer)
        full = applied is None or time.monotonic() - self._full_at >= PERIOD
        if not full:
            keys = [k for k, want in desired.items() if applied.get(k) is not want]
            keys += [k for k in applied if k not in desired]
        done = threading.Event()
        result: dict = {}

        def in_loop() -> None:
            try:
                req, changes = diff_request(self._ctx.device, desired, self._managed, keys)
                if req.peers:
                    apply_set(req, self._ctx)
                result["changes"] = changes
            except Exception as exc:  # noqa: BLE001 - reported to the reconciler's thread
                result["error"] = exc
            finally:
                done.set()

        self._plane.call_soon_threadsafe(in_loop)
        deadline = time.monotonic() + APPLY_TIMEOUT
        while not done.wait(0.1):
            if self._stop.is_set() or time.monotonic() > deadline:
                return Changes()
        if "error" in result:
            raise result["error"]
        changes: Changes = result["changes"]
        self._applied = desired
        if full:
            self._full_at = time.monotonic()
        # A removed key that the registry no longer names is no longer ours.
        current = set(known.values())
        self._managed = {k for k in self._managed if k in current or k in desired}
        for name in changes.removed:
            client = snap.client(name)
            if client is not None and client.expired(now):
                log.info("%s: client %s expired: its peer is removed and its session ended", self.name, name)
        if changes:
            log.info("%s: reconciled with registry revision %d: %s", self.name, snap.revision, changes)
        return changes

    def _keys(self, snap: Snapshot) -> dict[str, bytes]:
        """Every client's public key decoded (kept from pass to pass: 10,000 decodes are ~10 ms)."""
        old = self._decoded
        self._decoded = {c.public_key: old.get(c.public_key) or decode_key(c.public_key) for c in snap.clients}
        return self._decoded

    def _pass(self, snap: Snapshot) -> None:
        now = self._clock()
        self._passed_at = now
        self.apply(snap, now)
        if self._publish is not None:
            try:
                self._publish(snap, now)
            except Exception:  # noqa: BLE001 - the file is a convenience; serving goes on
                log.exception("%s: could not rewrite the generated config", self.name)
        wake: list[float] = []
        for fn in self._listeners:
            try:
                when = fn(snap, now)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop reconciling
                log.exception("%s: a registry listener failed", self.name)
                continue
            if isinstance(when, (int, float)) and when > now:
                wake.append(float(when))
        self._wake_at = min(wake) if wake else None
        with self._changed:
            self.passes += 1
            self._changed.notify_all()

    def wait_passes(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.passes >= count, timeout)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        need_full = True
        failures = 0
        last_pass = 0.0
        while not self._stop.is_set():
            try:
                if self.registry is None:
                    self.registry = self._open()
                if need_full:
                    self.snapshot = self.registry.snapshot()
                    need_full = False
                    if failures:
                        log.info("%s: registry %s reachable again: full reconcile", self.name,
                                 self.registry.location)
                    failures = 0
                    self._pass(self.snapshot)
                    last_pass = time.monotonic()
                    # A full pass builds and drops a copy of every client (rows, peers, policy text):
                    # hand the freed heap back, or the idle server's RSS stays at that peak.
                    memory.give_back()
                snap = self.snapshot
                now = self._clock()
                # The next expiry after the last pass's look, not after now: one that passed during
                # the pass (or since) is due at once, not at the next periodic pass.
                due = _earliest(snap.next_expiry(self._passed_at), self._wake_at)
                wait = MAX_WAIT if due is None else max(0.0, min(MAX_WAIT, due - now))
                revision = self.registry.wait_for_change(snap.revision, wait)
                if revision != snap.revision:
                    need_full = True
                elif (due is not None and self._clock() >= due) or time.monotonic() - last_pass >= PERIOD:
                    self._pass(snap)
                    last_pass = time.monotonic()
            except RegistryUnavailable as exc:
                if not failures:
                    log.warning("%s: %s; serving the clients it knows and retrying", self.name, exc)
                need_full = True
                delay = RETRY[min(failures, len(RETRY) - 1)]
                failures += 1
                self._offline(delay)
            except RegistryError as exc:
                log.error("%s: %s", self.name, exc)
                need_full = True
                self._stop.wait(RETRY[-1])
            except Exception:  # noqa: BLE001 - keep following the registry whatever one pass hit
                log.exception("%s: reconcile failed", self.name)
                need_full = True
                self._stop.wait(RETRY[-1])

    def _offline(self, delay: float) -> None:
        """Wait DELAY for the registry, still expiring clients (and calling listeners) of the last snapshot on time."""
        end = time.monotonic() + delay
        while not self._stop.is_set() and time.monotonic() < end:
            snap = self.snapshot
            if snap is not None and self._plane is not None:
                now = self._clock()
                expired = frozenset(c.name for c in snap.active_clients(now)) != self._active
                if expired or (self._wake_at is not None and now >= self._wake_at):
                    self._pass(snap)
            self._stop.wait(min(0.25, max(0.0, end - time.monotonic())))


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None
