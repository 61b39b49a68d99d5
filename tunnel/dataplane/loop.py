"""The loop that moves packets between the TUN device and UDP.

Rules kept here (see shared/PERFORMANCE.md for the measurements behind them):
- every system call carries many packets (send.py, receive.py), and the
  core seals and opens every transport packet (tunnel.protocol.transport):
  this loop only moves bytes, calls the core and does what it returns;
- handshakes are queued and at most HANDSHAKE_BUDGET are processed per loop
  turn, so a flood of X25519 work cannot stall data; past UNDER_LOAD_QUEUE
  queued messages the core is told it is under load for UNDER_LOAD_SECONDS
  and answers with cookie replies (wireguard-go's rule);
- one turn (`service`) serves the descriptors that are ready, lightest
  first (ACKs and pings do not wait behind a turn of bulk data) and the
  listening sockets last, then the handshake queue, then the core's
  timers; `run` is epoll around it, and tests call `service` with a fake
  clock;
- the loop's thread owns the Device: other threads hand it work with
  call_soon_threadsafe;
- what the kernel dropped at the UDP sockets (the socket filter, a full
  buffer) is read once a second (KERNEL_DROPS_INTERVAL) into the same drop
  counters, so `tunnel show` and the metrics see it;
- every peer with a session (or one being renewed: a previous or next
  keypair) gets a UDP socket of its own (Bind.pin, up to PINNED_MAX),
  re-decided when a handshake completes, a peer roams or its keys go
  (looking at the peers those events name and those with a session, not
  at all 10,000 configured ones), and once a second (all of them): an
  established session's datagrams then
  queue apart from whatever floods the listening port, and a turn serves
  them first (they are light), so garbage costs them neither buffer space
  nor waiting; in a turn where the TUN or a pinned socket had work, the
  listening sockets get only SHARED_READS_WHEN_BUSY reads (the kernel
  drops what does not fit in their buffers, at no cost to us), so a flood
  takes a bounded share of the loop from established sessions;
- the loop ends by itself when the TUN device's interface is gone (a read
  says EBADFD: `ip link del`, or the namespace it was moved to was
  deleted); `tun_gone` then says so to whoever ran it;
- the sockets may change under the loop (`rebind`: `wg set listen-port`),
  and others may hang periodic work on it (`every`), run between turns in
  the loop's thread like everything that touches the Device.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import time
from typing import Callable

from ..protocol import Device, Drop, Event, SendDatagram, WritePacket
from ..protocol.crypto import encode_key
from ..resolve import format_endpoint as _format_endpoint
from . import drops as D
from .io import TunGone
from .receive import UDP_READS_PER_TURN, Receiver
from .send import Sender

log = logging.getLogger("tunnel")

HANDSHAKE_BUDGET = 8
HANDSHAKE_QUEUE_MAX = 4096
UNDER_LOAD_QUEUE = 64
UNDER_LOAD_SECONDS = 1.0
KERNEL_DROPS_INTERVAL = 1.0
# Sockets of their own for this many peers with a session (each is a descriptor).
PINNED_MAX = 256
PIN_INTERVAL = 1.0
# Reads a listening socket gets in a turn in which established traffic had work.
SHARED_READS_WHEN_BUSY = 32
_PIN_EVENTS = frozenset(("handshake_completed", "roamed", "keys_zeroed"))


class DataPlane:
    def __init__(
        self,
        device: Device,
        tun,
        bind,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] | None = None,
    ):
        self.device = device
        self.tun = tun
        self.bind = bind
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_event = on_event or log_event
        # One set of counters for the interface: the core's and ours.
        self.stats = device.counters
        self.sender = Sender(device, tun, bind, self.perform)
        self.receiver = Receiver(device, tun, bind, self.perform, self.queue_handshake)
        self.handshakes: collections.deque = collections.deque()
        self._under_load_until = 0.0
        self._stop = False
        self._sleep = 1.0  # what the last turn said `run` may sleep
        self.tun_gone = False
        self._periodic: list[list] = []  # [interval, next due, fn]
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.extra_fds: dict[int, Callable[[], None]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._work: dict[int, int] = {}  # bytes each descriptor gave last time
        self._kernel_drops = bind.kernel_drops()
        self._kernel_drops_at = clock()
        self._pins_dirty = False
        self._pinned_at = clock()
        self._chores_at = min(self._kernel_drops_at + KERNEL_DROPS_INTERVAL, self._pinned_at + PIN_INTERVAL)
        # The peers that had a session at the last full look, and those a handshake,
        # roaming or key event named since: what a re-pin between full looks considers.
        self._live: dict = {}
        self._epoll: select.epoll | None = None
        self._shared_fds = frozenset(bind.fds())  # the listening sockets: everything not pinned

    # ------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self._stop = True
        self._wake()

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run fn in the loop's thread at its next turn (from any thread)."""
        self._calls.append(fn)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.extra_fds[fd] = callback
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self.extra_fds.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def every(self, interval: float, fn: Callable[[float], None]) -> None:
        """Call fn(now) in the loop's thread about every `interval` seconds (at most 1 s late)."""
        due = self.clock() + interval
        self._periodic.append([interval, due, fn])
        self._chores_at = min(self._chores_at, due)

    def rebind(self, port: int) -> int:
        """Listen on PORT from now on (0: any free one) and return it; OSError changes nothing."""
        opened, closed = self.bind.rebind(port)
        for fd in closed:  # closing took them out of the epoll set
            self._work.pop(fd, None)
        if self._epoll is not None:
            for fd in opened:
                self._epoll.register(fd, select.EPOLLIN)
        self._shared_fds = frozenset(opened) if opened else self._shared_fds
        self._kernel_drops = self.bind.kernel_drops()
        self._pins_dirty = True  # the established peers get sockets on the new port
        return self.bind.port

    def timeout(self) -> float:
        """How long the loop may sleep now (seconds)."""
        return self._timeout(self.device.next_deadline())

    def _timeout(self, deadline: float | None) -> float:
        if self.handshakes or self._calls:
            return 0.0
        if deadline is None:
            return 1.0
        return max(0.0, min(1.0, deadline - self.clock()))

    def run(self) -> None:
        ep = self._epoll = select.epoll()
        try:
            for fd in (self.tun.fd, *self.bind.fds(), self._wake_r, *self.extra_fds):
                ep.register(fd, select.EPOLLIN)
            sleep = self.timeout()
            while not self._stop:
                events = ep.poll(sleep)
                # One descriptor is the common case (a lone packet): no comprehension for it.
                self.service([events[0][0]] if len(events) == 1 else [fd for fd, _ in events], self.clock())
                sleep = self._sleep
        finally:
            self._epoll = None
            ep.close()

    def service(self, ready: list[int], now: float) -> None:
        """One turn: the ready descriptors (lightest first), the handshake queue, the timers."""
        # Initiations made in this turn carry the wall clock as it is now (NTP may have moved it).
        self.device.sync_wall(self.wall_clock(), now)
        work = self._work
        shared = self._shared_fds
        if len(ready) > 1:
            # Lightest first, the listening sockets last: their budget depends on what the others had.
            ready.sort(key=lambda fd: (fd in shared, work.get(fd, 0)))
        tun_fd = self.tun.fd
        busy = False  # the TUN or a pinned socket had work in this turn
        for fd in ready:
            if fd == tun_fd:
                try:
                    work[fd] = n = self.sender.from_tun(now)
                except TunGone:
                    self.tun_gone = True
                    self.stop()
                    return
                busy = busy or n > 0
            elif fd == self._wake_r:
                try:
                    os.read(self._wake_r, 512)
                except OSError:
                    pass
            elif fd in self.extra_fds:
                self.extra_fds[fd]()
            elif fd in shared:
                work[fd] = self.receiver.from_udp(fd, now, SHARED_READS_WHEN_BUSY if busy else UDP_READS_PER_TURN)
            else:
                work[fd] = n = self.receiver.from_udp(fd, now)
                busy = busy or n > 0
        while self._calls:
            self._calls.popleft()()
        if self.handshakes:
            self.process_handshakes(self.clock())
        device = self.device
        deadline = device.next_deadline()
        if deadline is not None and deadline <= now:
            self.perform(device.tick(now), now)
            deadline = None
        if self._pins_dirty or now >= self._chores_at:
            self._chores(now)
            deadline = None
        # How long `run` sleeps next: the deadline looked up above, unless timers may have moved since.
        self._sleep = self._timeout(device.next_deadline() if deadline is None else deadline)

    def _chores(self, now: float) -> None:
        """What is due about once a second (one comparison a turn says when: `_chores_at`)."""
        if now - self._kernel_drops_at >= KERNEL_DROPS_INTERVAL:
            self.count_kernel_drops(now)
        if self._pins_dirty or now - self._pinned_at >= PIN_INTERVAL:
            self.repin(now)
        for job in self._periodic:
            if now >= job[1]:
                job[1] = now + job[0]
                job[2](now)
        self._chores_at = min(self._kernel_drops_at + KERNEL_DROPS_INTERVAL, self._pinned_at + PIN_INTERVAL,
                              *(job[1] for job in self._periodic))

    def repin(self, now: float) -> None:
        """Sockets of their own for the peers that have a session now, or are renewing one (and for no one else)."""
        full = now - self._pinned_at >= PIN_INTERVAL
        self._pins_dirty = False
        if full:
            self._pinned_at = now
            self._live = {p: None for p in self.device.peers.values() if _pinnable(p)}
        endpoints = []
        for peer in list(self._live):
            if peer.removed or not _pinnable(peer):
                del self._live[peer]
            elif peer.endpoint is not None and len(endpoints) < PINNED_MAX:
                endpoints.append(peer.endpoint)
        opened, closed = self.bind.pin(endpoints)
        for fd in closed:  # closing took them out of the epoll set
            self._work.pop(fd, None)
        if self._epoll is not None:
            for fd in opened:
                self._epoll.register(fd, select.EPOLLIN)

    def count_kernel_drops(self, now: float) -> None:
        """Add what the kernel dropped at our sockets since the last look (its counters are u32)."""
        self._kernel_drops_at = now
        total = self.bind.kernel_drops()
        delta = (total - self._kernel_drops) % (1 << 32)
        self._kernel_drops = total
        if delta:
            self.stats.drops[D.UDP_KERNEL_DROPS] += delta

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------
    # what the core asks for
    # ------------------------------------------------------------------

    def perform(self, actions, now: float) -> None:
        for a in actions:
            t = type(a)
            if t is SendDatagram:
                self.send_one(a.data, a.endpoint)
            elif t is WritePacket:
                self.receiver.write_plain(a.data)
            elif t is Event:
                if a.kind in _PIN_EVENTS:
                    self._pins_dirty = True
                    self._live[a.peer] = None
                self.on_event(a)
            elif t is not Drop:  # drops are counted by the core
                raise TypeError(f"unknown action {a!r}")

    def send_one(self, data, endpoint) -> None:
        try:
            self.bind.send(data, endpoint)
            self.stats.udp_sends += 1
        except BlockingIOError:
            self.stats.drops[D.UDP_SEND_BUSY] += 1
        except OSError as exc:
            reason = D.NO_SOCKET_FOR_FAMILY if exc.errno == errno.EAFNOSUPPORT else D.UDP_SEND_ERROR
            self.stats.drops[reason] += 1
            log.debug("send to %s failed: %s", format_endpoint(endpoint), exc)

    # ------------------------------------------------------------------
    # handshakes, off the fast path
    # ------------------------------------------------------------------

    def queue_handshake(self, data: bytes, source: tuple) -> None:
        if len(self.handshakes) >= HANDSHAKE_QUEUE_MAX:
            self.stats.drops[D.HANDSHAKE_QUEUE_FULL] += 1
            return
        self.handshakes.append((data, source))
        if len(self.handshakes) > self.stats.handshakes_queued_max:
            self.stats.handshakes_queued_max = len(self.handshakes)

    def process_handshakes(self, now: float) -> None:
        if len(self.handshakes) >= UNDER_LOAD_QUEUE:
            self._under_load_until = now + UNDER_LOAD_SECONDS
        under_load = now < self._under_load_until
        # Under load most messages get a cookie reply (no X25519), so more fit in a turn.
        budget = 8 * HANDSHAKE_BUDGET if under_load else HANDSHAKE_BUDGET
        receive = self.device.receive_datagram
        for _ in range(min(budget, len(self.handshakes))):
            data, source = self.handshakes.popleft()
            self.perform(receive(data, source, now, under_load), now)


def _pinnable(peer) -> bool:
    """A peer with a session, or one being renewed. A session set aside for a new handshake
    (Peer.switch_endpoint, a standby's takeover) keeps the peer's socket: its answer may already wait
    in that socket's queue, and closing the socket would drop it (a retry only REKEY_TIMEOUT later)."""
    return peer.current is not None or peer.previous is not None or peer.next is not None


def format_endpoint(endpoint) -> str:
    return "(none)" if endpoint is None else _format_endpoint(endpoint)


def peer_name(peer) -> str:
    if peer is None:
        return "?"
    if peer.name:
        return peer.name
    return encode_key(peer.public_key)[:8] + "…"


def log_event(ev: Event) -> None:
    name = peer_name(ev.peer)
    if ev.kind == "handshake_completed":
        log.info("peer %s: handshake completed", name)
    elif ev.kind == "roamed":
        log.info("peer %s: roamed to %s", name, format_endpoint(ev.detail))
    elif ev.kind == "handshake_gave_up":
        log.warning("peer %s: no handshake after 90 s; dropped %s queued packets", name, ev.detail)
    elif ev.kind == "keys_zeroed":
        log.info("peer %s: session keys wiped", name)
    else:
        log.debug("peer %s: %s %s", name, ev.kind, ev.detail if ev.detail is not None else "")
