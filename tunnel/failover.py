"""Several endpoints for one peer: move to the next when it goes quiet, back to the first when that answers.

A [Peer] may say where else it answers, after the Endpoint that wg-quick and
the official apps use (they read only that one; ours is a comment to them):

    Endpoint = vpn1.example.com:51820
    # FailoverEndpoints = vpn2.example.com:51820, 192.0.2.3:51820

They are gateways of one server (`tunnel server join`): the same key, each
with sessions of its own. Per peer with more than one endpoint:
- start on the first whose name resolves (names are looked up when the
  interface comes up, before the kill switch and DNS change anything);
- when nothing authenticated has come from the peer for SILENCE seconds while
  something of ours waited for an answer (data sent or a handshake initiation:
  Peer.awaiting_reply), move to the next, cyclically: Device.switch_endpoint
  starts a handshake there at once and keeps what is sent meanwhile staged;
- while not on the first, PROBE_INTERVAL after leaving it and at most once per
  PROBE_INTERVAL after that, send the first an initiation that moves nothing
  (Device.probe); its authenticated answer roams the peer there (the core does
  it), and we stay;
- a roam to another listed endpoint that is not the answer to our probe is
  undone: that gateway holds none of our current session (a late packet from
  the one we left, a keepalive from an old session), so sending there would be
  sending into the void. A roam to an address not listed is taken as the
  current endpoint's new address (its name resolved anew, a NAT on the way).
  An endpoint set on purpose (`wg set`) to another listed one stands: the
  choice starts from it, with a handshake there.

Rules kept here:
- `Chooser` decides and nothing else: the caller's time and what it read from
  the peer in, a decision out; tests drive it on a fake clock;
- `Failover` acts, only in the data plane's thread (the one that owns the
  Device): its ticker thread only hands `tick` to call_soon_threadsafe, and
  `on_event` is called from the loop;
- each switch is one log line and one count (Counters.endpoint_switches, in
  `tunnel show` and the metrics); a probe is a debug line;
- nothing here reads a clock of its own: the data plane's is used.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .dataplane import format_endpoint, peer_name
from .protocol.constants import REKEY_TIMEOUT
from .resolve import EndpointResolutionError, Resolve, endpoint_tuple

log = logging.getLogger("tunnel")

SILENCE = 15.0  # seconds with nothing from the peer while we wait for an answer: move on
PROBE_INTERVAL = 60.0  # at most one probe of the first endpoint a minute while on another
PROBE_ANSWER = REKEY_TIMEOUT  # a roam to the probed endpoint this soon after the probe is its answer
TICK = 0.5  # seconds between two looks at the peers


# --- the decision -------------------------------------------------------------------


@dataclass(frozen=True)
class Switch:
    """Move to endpoint `index` now (the one before went quiet)."""

    index: int


@dataclass(frozen=True)
class Probe:
    """Send endpoint `index` an initiation without moving."""

    index: int


class Chooser:
    """Which of COUNT endpoints a peer should use, from what the caller sees of it over time.

    Call `observe` regularly (every TICK seconds) with the caller's monotonic
    time, `heard` (any number that grows whenever something authenticated
    arrives from the peer: its received bytes plus completed handshakes) and
    `awaiting` (Peer.awaiting_reply). `moved` is asked when the core roamed
    the peer to another listed endpoint by itself.
    """

    def __init__(self, count: int, now: float, start: int = 0, *, silence: float = SILENCE,
                 probe_interval: float = PROBE_INTERVAL):
        if not 0 <= start < count:
            raise ValueError("start must be one of the endpoints")
        self.count = count
        self.index = start
        self.silence = silence
        self.probe_interval = probe_interval
        self._heard: int | None = None
        self._waiting_since: float | None = None  # first look that saw us waiting, with nothing heard since
        self._last_probe = now  # leaving the first counts as a probe: the next is a whole interval later
        self._probe: tuple[int, float] | None = None  # (index, when) of the probe still unanswered

    def observe(self, now: float, heard: int, awaiting: bool) -> Switch | Probe | None:
        if heard != self._heard:
            self._heard = heard
            self._waiting_since = now if awaiting else None
        elif awaiting and self._waiting_since is None:
            self._waiting_since = now
        if self._waiting_since is not None and now - self._waiting_since >= self.silence and self.count > 1:
            self.index = (self.index + 1) % self.count
            self._waiting_since = None
            self._last_probe = now
            self._probe = None
            return Switch(self.index)
        if self.index != 0 and now - self._last_probe >= self.probe_interval:
            self._last_probe = now
            self._probe = (0, now)
            return Probe(0)
        return None

    def probe_refused(self) -> None:
        """The core sent nothing (a handshake of ours was in flight): try again at the next look."""
        self._last_probe = float("-inf")
        self._probe = None

    def chose(self, index: int, now: float) -> None:
        """Someone put the peer on endpoint INDEX on purpose (`wg set ... endpoint`): start from there."""
        self.index = index
        self._waiting_since = None
        self._last_probe = now
        self._probe = None

    def moved(self, index: int, now: float) -> bool:
        """The peer roamed to endpoint INDEX: True to stay there (our probe's answer), False to go back."""
        if index == self.index:
            return True
        probe = self._probe
        if probe is not None and probe[0] == index and now - probe[1] <= PROBE_ANSWER:
            self.index = index
            self._probe = None
            self._waiting_since = None
            return True
        return False


# --- endpoints ----------------------------------------------------------------------


@dataclass
class Endpoint:
    host: str
    port: int
    address: tuple  # as the core keeps endpoints (tunnel/resolve.py endpoint_tuple)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def resolve_endpoints(endpoints: list[tuple[str, int]], resolve: Resolve) -> tuple[list[Endpoint], list[str]]:
    """Each (host, port) looked up: those that resolve (one per address), and why the others did not."""
    found: list[Endpoint] = []
    failures: list[str] = []
    for host, port in endpoints:
        try:
            address = endpoint_tuple(resolve(host, port))
        except EndpointResolutionError as exc:
            failures.append(f"{host}: {exc}")
            continue
        if all(e.address != address for e in found):
            found.append(Endpoint(host, port, address))
    return found, failures


# --- acting on the decisions --------------------------------------------------------


@dataclass
class _Watched:
    peer: Any  # tunnel.protocol.peer.Peer
    endpoints: list[Endpoint]
    chooser: Chooser

    def index_of(self, address: tuple) -> int | None:
        return next((i for i, e in enumerate(self.endpoints) if e.address == address), None)


class Failover:
    """The peers of one interface that have several endpoints, each kept on the one its Chooser picks."""

    def __init__(self, device: Any, counters: Any, *, ifname: str = "",
                 follow: Callable[[bytes, tuple[str, int]], None] | None = None):
        self.device = device
        self.counters = counters
        self.ifname = ifname
        self._follow = follow  # told (public key, (host, port)) at each switch: re-resolution follows it
        self.watched: dict[bytes, _Watched] = {}
        self._perform: Callable[[list, float], None] | None = None
        self._clock: Callable[[], float] | None = None

    def add(self, peer: Any, endpoints: list[Endpoint], now: float) -> None:
        """Watch PEER, whose endpoint is already endpoints[0]."""
        if len(endpoints) > 1:
            self.watched[peer.public_key] = _Watched(peer, endpoints, Chooser(len(endpoints), now))

    def addresses(self) -> list[tuple]:
        """Every address a watched peer may be sent to (the kill switch lets each out)."""
        return [e.address for w in self.watched.values() for e in w.endpoints]

    # -- in the data plane's thread ------------------------------------------------------

    def tick(self) -> None:
        assert self._clock is not None and self._perform is not None, "attach() or start() first"
        now = self._clock()
        for key, w in list(self.watched.items()):
            peer = w.peer
            if peer.removed:
                del self.watched[key]
                continue
            self._follow_peer(w, now, roamed=False)
            decision = w.chooser.observe(now, peer.rx_bytes + peer.handshakes_completed, peer.awaiting_reply)
            if isinstance(decision, Switch):
                self._switch(w, decision.index, now)
            elif isinstance(decision, Probe):
                target = w.endpoints[decision.index]
                out = self.device.probe(peer, target.address, now)
                if not out:
                    w.chooser.probe_refused()
                    continue
                log.debug("%s: peer %s: probing %s", self.ifname, peer_name(peer), target)
                self._perform(out, now)

    def on_event(self, ev: Any) -> None:
        """The core's events (the data plane's on_event): a roam of a watched peer is checked at once."""
        if ev.kind != "roamed" or ev.peer is None or self._clock is None:
            return
        w = self.watched.get(ev.peer.public_key)
        if w is not None and w.peer is ev.peer:
            self._follow_peer(w, self._clock(), roamed=True)

    def _switch(self, w: _Watched, index: int, now: float) -> None:
        target = w.endpoints[index]
        old = w.peer.endpoint
        self._perform(self.device.switch_endpoint(w.peer, target.address, now), now)
        self.counters.endpoint_switches += 1
        if self._follow is not None:
            self._follow(w.peer.public_key, (target.host, target.port))
        log.warning("%s: peer %s: nothing from %s for %.0f s: switched to %s (endpoint %d of %d)", self.ifname,
                    peer_name(w.peer), format_endpoint(old), w.chooser.silence, target, index + 1, len(w.endpoints))

    def _follow_peer(self, w: _Watched, now: float, roamed: bool) -> None:
        """The peer's endpoint moved without us: the core ROAMED it (keep it or put ours back), or
        someone set it (`wg set`, re-resolution: the tick finds it, and it stands)."""
        current = w.endpoints[w.chooser.index]
        address = w.peer.endpoint
        if address is None or address == current.address:
            return
        index = w.index_of(address)
        if index is None:  # where the current endpoint is now
            current.address = address
            return
        if not roamed:  # another gateway: a handshake there, as after any switch
            w.chooser.chose(index, now)
            self._perform(self.device.switch_endpoint(w.peer, address, now), now)
            log.info("%s: peer %s: set to %s (endpoint %d of %d)", self.ifname, peer_name(w.peer),
                     w.endpoints[index], index + 1, len(w.endpoints))
        elif w.chooser.moved(index, now):
            self.counters.endpoint_switches += 1
            target = w.endpoints[index]
            if self._follow is not None:
                self._follow(w.peer.public_key, (target.host, target.port))
            log.info("%s: peer %s: %s answers again: back on it (endpoint %d of %d)", self.ifname,
                     peer_name(w.peer), target, index + 1, len(w.endpoints))
        else:
            log.debug("%s: peer %s: a packet from %s, which holds none of our session: staying on %s",
                      self.ifname, peer_name(w.peer), w.endpoints[index], current)
            w.peer.endpoint = current.address

    # -- as a service of the running interface ------------------------------------------

    def attach(self, plane: Any) -> None:
        """Act through PLANE (its perform, its clock); tests then call `tick` themselves."""
        self._perform = plane.perform
        self._clock = plane.clock

    def start(self, plane: Any, interval: float = TICK) -> "_Ticker":
        """Run `tick` in PLANE's thread every INTERVAL seconds; close() the result to stop."""
        self.attach(plane)
        return _Ticker(plane, self.tick, interval)


class _Ticker:
    def __init__(self, plane: Any, fn: Callable[[], None], interval: float):
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.wait(interval):
                plane.call_soon_threadsafe(fn)

        self._thread = threading.Thread(target=run, name="failover", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
