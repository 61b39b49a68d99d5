"""Each peer's last authenticated endpoint, written to the endpoint store off the data plane.

The core says when a peer's endpoint is worth keeping: Event("handshake_completed")
(a new session: the peer is here, at peer.endpoint) and Event("roamed") (it
moved). The loop's thread hands each to `on_event`, which only notes it; a
thread of the recorder's own writes what is due to the store.

Rules kept here:
- the loop's thread never waits on the store: `on_event` takes a lock for a
  dictionary update and, when something is due, sets a flag;
- a peer's record is written at most once per WRITE_INTERVAL (WriteSchedule):
  a peer that handshakes every two minutes, or roams back and forth, costs
  the store one row a minute at most; a record noted sooner waits for its
  minute (the newest one noted is the one written);
- writes are batched: at most one call to the store per BATCH_GAP, so a
  thousand peers handshaking at once (a restart resuming them) cost a few
  writes, not a thousand;
- the store is read (`load`, for resumption at start) and written from this
  thread only; a failure is one warning, the records stay pending and are
  tried again after RETRY_SECONDS;
- at close what is still pending is written once, whatever its minute: a
  clean restart then starts from the newest records;
- clocks are injected: `clock` (monotonic) paces the writes, `wall_clock`
  stamps the records, which must mean the same after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from .endpointstore import EndpointStore, EndpointStoreError, SeenEndpoint

log = logging.getLogger("tunnel")

WRITE_INTERVAL = 60.0  # seconds: at most one write of a peer's record per this
BATCH_GAP = 1.0  # seconds between two writes to the store
RETRY_SECONDS = 10.0  # after a failed write
CLOSE_TIMEOUT = 10.0  # the final write at close, at most (a registry gives up within seconds)
RECORDED_EVENTS = frozenset(("handshake_completed", "roamed"))


class WriteSchedule:
    """Which records are due: per peer at most one write per `interval` (no locking, no clock)."""

    def __init__(self, interval: float = WRITE_INTERVAL):
        self.interval = interval
        self.pending: dict[bytes, SeenEndpoint] = {}
        self.written_at: dict[bytes, float] = {}

    def note(self, record: SeenEndpoint, now: float) -> bool:
        """Keep RECORD to write; True if it is due at once."""
        self.pending[record.public_key] = record
        last = self.written_at.get(record.public_key)
        return last is None or now - last >= self.interval

    def due(self, now: float) -> list[SeenEndpoint]:
        """The pending records whose peer's minute is up (they stay pending until `written`)."""
        written = self.written_at
        return [r for k, r in self.pending.items() if k not in written or now - written[k] >= self.interval]

    def written(self, records: Sequence[SeenEndpoint], now: float) -> None:
        for r in records:
            self.written_at[r.public_key] = now
            if self.pending.get(r.public_key) is r:  # not replaced by a newer one meanwhile
                del self.pending[r.public_key]
        # A peer whose minute is up is "never written" again: the map holds recent writers only.
        if len(self.written_at) > 2 * len(self.pending) + 1024:
            self.written_at = {k: t for k, t in self.written_at.items() if now - t < self.interval}

    def next_due(self) -> float | None:
        """When the earliest pending record becomes due (None: nothing pending)."""
        times = [self.written_at.get(k, float("-inf")) + self.interval for k in self.pending]
        return min(times) if times else None


class EndpointRecorder:
    """Start with `start(on_loaded, seen_since)`; feed `on_event` from the loop's thread; `close()`."""

    def __init__(self, store: EndpointStore, *, ifname: str = "",
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 interval: float = WRITE_INTERVAL, batch_gap: float = BATCH_GAP, retry: float = RETRY_SECONDS):
        self.store = store
        self.ifname = ifname
        self.clock = clock
        self.wall_clock = wall_clock
        self.batch_gap = batch_gap
        self.retry = retry
        self.schedule = WriteSchedule(interval)
        self.writes = 0  # calls to store.save that succeeded (tests, the log)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # -- the loop's thread -------------------------------------------------------------

    def on_event(self, ev) -> None:
        if ev.kind not in RECORDED_EVENTS or ev.peer is None or ev.peer.endpoint is None:
            return
        record = SeenEndpoint(ev.peer.public_key, ev.peer.endpoint, self.wall_clock())
        with self._lock:
            due = self.schedule.note(record, self.clock())
        if due:
            self._wake.set()

    # -- its own thread ------------------------------------------------------------------

    def start(self, on_loaded: Callable[[list[SeenEndpoint]], None] | None = None,
              seen_since: float | None = None) -> "EndpointRecorder":
        """Run the writer; first, if ON_LOADED is given, load the records seen since SEEN_SINCE for it."""
        self._thread = threading.Thread(target=self._run, args=(on_loaded, seen_since),
                                        name=f"endpoints-{self.ifname}", daemon=True)
        self._thread.start()
        return self

    def _run(self, on_loaded, seen_since) -> None:
        if on_loaded is not None:
            try:
                loaded = self.store.load(seen_since if seen_since is not None else 0.0)
            except EndpointStoreError as exc:
                log.warning("%s: endpoints of the last run not read: %s", self.ifname, exc)
                loaded = []
            on_loaded(loaded)
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a note made meanwhile wakes the next wait
            pause, wait = self.write_due()
            if pause:
                self._stop.wait(pause)  # notes made meanwhile wait for the next look
            else:
                self._wake.wait(wait)
        self.flush()

    def write_due(self) -> tuple[float, float | None]:
        """Write what is due now. Returns (pause, wait): sleep `pause` seconds whatever is noted
        (after a write: BATCH_GAP; after a failure: RETRY_SECONDS), else wait up to `wait` seconds
        for a note that is due at once (None: until one comes)."""
        now = self.clock()
        with self._lock:
            records = self.schedule.due(now)
        if records:
            return (self.batch_gap if self._save(records, now) else self.retry), None
        with self._lock:
            nd = self.schedule.next_due()
        return 0.0, None if nd is None else max(0.0, nd - now)

    def flush(self) -> None:
        """Write every pending record now, whatever its minute (at close)."""
        with self._lock:
            records = list(self.schedule.pending.values())
        if records:
            self._save(records, self.clock())

    def _save(self, records: list[SeenEndpoint], now: float) -> bool:
        try:
            self.store.save(records)
        except EndpointStoreError as exc:
            if not self._failing:
                log.warning("%s: endpoints not saved (tried again every %.0f s): %s", self.ifname, self.retry, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("%s: endpoints saved again to %s", self.ifname, self.store.where)
        self._failing = False
        self.writes += 1
        with self._lock:
            self.schedule.written(records, now)
        return True

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("%s: endpoints: the store did not answer within %.0f s at close", self.ifname,
                            CLOSE_TIMEOUT)
        try:
            self.store.close()
        except EndpointStoreError:
            pass
