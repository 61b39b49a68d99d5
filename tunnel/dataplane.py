"""The loop that moves packets between the TUN device and UDP.

Rules kept here (see shared/PERFORMANCE.md for the measurements behind them):
- every system call carries many packets: TUN super-packets (TSO) are split
  straight into one UDP GSO train per peer, received GRO trains are
  decrypted and merged back into TCP super-packets for one TUN write each;
- per segment: one AEAD call in place in a preallocated buffer and a few
  pack_into; no per-packet objects or function layers on the fast path;
- the protocol core decides everything about sessions: the fast path only
  uses a keypair the core says is usable and reports back once per batch
  (Peer.note_sent / note_received); anything unusual goes through the
  core's general entry points (Device.send_packet / receive_datagram);
- handshakes are queued and at most HANDSHAKE_BUDGET are processed per loop
  turn, so a flood of X25519 work cannot stall data; past
  UNDER_LOAD_QUEUE queued messages the core is told it is under load and
  answers with cookie replies;
- every packet we put on the wire is a complete, valid IP packet (checksums
  done by offload.Splitter), whatever the peer.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import struct
import time
from typing import Callable

from cryptography.exceptions import InvalidTag

from .offload import VNET_HDR_LEN, Coalescer, OffloadError, Splitter
from .protocol import Device, Drop, Event, SendDatagram, WritePacket
from .protocol.constants import (
    MESSAGE_TRANSPORT_DATA,
    PADDING_MULTIPLE,
    TRANSPORT_HEADER_SIZE,
)
from .protocol.device import inner_length
from .protocol.keypair import Keypair
from .udp import MAX_GSO_BYTES, MAX_GSO_SEGMENTS, UdpEndpoint, recv_batch, send_gso

log = logging.getLogger("tunnel")

MAX_UDP_PAYLOAD = MAX_GSO_BYTES
GSO_MAX_SEGMENTS = MAX_GSO_SEGMENTS
# Work per descriptor per loop turn, in bytes: a TUN read is up to a 64 KB
# super-packet, so 128 KB fill GSO sends; more make everything else wait (the
# other direction's ACKs, a ping): 1 MB is ~4 ms of work, 128 KB ~0.5 ms.
# The read-count limits only matter for small packets, which must be drained
# fast or they overflow the TUN ring.
TUN_BYTES_PER_TURN = 128 << 10
TUN_READS_PER_TURN = 256
# UDP reads stop at whichever comes first: these bytes (about 4 GRO trains) or
# this many calls (a flood of small datagrams must still be drained quickly,
# or it fills the socket buffer and data is dropped there instead).
UDP_BYTES_PER_TURN = 256 << 10
UDP_READS_PER_TURN = 128
HANDSHAKE_BUDGET = 8
HANDSHAKE_QUEUE_MAX = 4096
# Under load from this queue length on, and for UNDER_LOAD_SECONDS after (wireguard-go's rule).
UNDER_LOAD_QUEUE = 64
UNDER_LOAD_SECONDS = 1.0

_HDR = struct.Struct("<IIQ")
_NONCE = struct.Struct("<IQ")
_EMPTY_VNET = bytes(VNET_HDR_LEN)
_RECV_HDR = struct.Struct("<IQ")  # receiver, counter at offset 4


class Stats:
    """Interface counters (show / metrics)."""

    __slots__ = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "drops", "handshakes_queued_max",
                 "cookie_replies", "tun_writes", "udp_sends")

    def __init__(self):
        self.rx_packets = self.tx_packets = self.rx_bytes = self.tx_bytes = 0
        self.handshakes_queued_max = self.cookie_replies = self.tun_writes = self.udp_sends = 0
        self.drops: collections.Counter[str] = collections.Counter()


class _Train:
    """One UDP GSO train being built: datagrams of equal size to one endpoint."""

    __slots__ = ("buf", "view", "pos", "count", "seg", "endpoint", "closed")

    def __init__(self):
        # Room for a full train plus one segment written before we know it fits.
        self.buf = bytearray(MAX_UDP_PAYLOAD + 70000)
        self.view = memoryview(self.buf)
        self.reset()

    def reset(self) -> None:
        self.pos = 0
        self.count = 0
        self.seg = 0
        self.endpoint = None
        self.closed = False


class DataPlane:
    def __init__(
        self,
        device: Device,
        tun,
        udp: UdpEndpoint,
        *,
        vnet_hdr: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[Event], None] | None = None,
    ):
        self.device = device
        self.tun = tun
        self.udp = udp
        self.vnet = vnet_hdr
        self.clock = clock
        self.on_event = on_event or self._log_event
        self.stats = Stats()
        self.splitter = Splitter()
        self.coalescer = Coalescer(verify=False)
        self.rbuf = bytearray(VNET_HDR_LEN + 65536)
        self.rview = memoryview(self.rbuf)
        self.ubuf = bytearray(65536 + 4096)
        self.uview = memoryview(self.ubuf)
        self.pbuf = bytearray(65536)
        self.pview = memoryview(self.pbuf)
        self.train = _Train()
        self.handshakes: collections.deque = collections.deque()
        self._under_load_until = 0.0
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.extra_fds: dict[int, Callable[[], None]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()

    # ------------------------------------------------------------------
    # loop
    # ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run fn in the loop's thread at its next turn (from any thread)."""
        self._calls.append(fn)
        try:
            os.write(self._wake_w, b"c")
        except OSError:
            pass

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.extra_fds[fd] = callback

    def run(self) -> None:
        ep = select.epoll()
        tun_fd = self.tun.fd
        ep.register(tun_fd, select.EPOLLIN)
        by_fd = {}
        for s in self.udp.sockets():
            ep.register(s.fileno(), select.EPOLLIN)
            by_fd[s.fileno()] = s
        ep.register(self._wake_r, select.EPOLLIN)
        for fd in self.extra_fds:
            ep.register(fd, select.EPOLLIN)
        device = self.device
        work: dict[int, int] = {}  # bytes each descriptor gave last time
        try:
            while not self._stop:
                deadline = device.next_deadline()
                if self.handshakes:
                    timeout = 0.0
                elif deadline is None:
                    timeout = 1.0
                else:
                    timeout = max(0.0, min(1.0, deadline - self.clock()))
                events = ep.poll(timeout)
                now = self.clock()
                if len(events) > 1:
                    # Lightest first: ACKs and pings waiting on one side are not
                    # made to wait behind a turn of bulk data on the other.
                    events.sort(key=lambda e: work.get(e[0], 0))
                for fd, _ in events:
                    if fd == tun_fd:
                        work[fd] = self.from_tun(now)
                    elif fd in by_fd:
                        work[fd] = self.from_udp(by_fd[fd], now)
                    elif fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 512)
                        except OSError:
                            pass
                        while self._calls:
                            self._calls.popleft()()
                    elif fd in self.extra_fds:
                        self.extra_fds[fd]()
                if self.handshakes:
                    self.process_handshakes(self.clock())
                deadline = device.next_deadline()
                if deadline is not None and deadline <= now:
                    self.perform(device.tick(now), now)
        finally:
            ep.close()

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------
    # actions from the core
    # ------------------------------------------------------------------

    def perform(self, actions, now: float) -> None:
        for a in actions:
            t = type(a)
            if t is SendDatagram:
                self.send_one(a.data, a.endpoint)
            elif t is WritePacket:
                self.write_plain(a.data)
            elif t is Drop:
                self.stats.drops[a.reason] += 1
            elif t is Event:
                self.on_event(a)

    def _log_event(self, ev: Event) -> None:
        name = _peer_name(ev.peer)
        if ev.kind == "handshake_completed":
            log.info("peer %s: handshake completed", name)
        elif ev.kind == "roamed":
            log.info("peer %s: roamed to %s", name, _fmt_endpoint(ev.detail))
        elif ev.kind == "handshake_gave_up":
            log.warning("peer %s: no handshake after 90 s; dropped %s queued packets", name, ev.detail)
        elif ev.kind == "keys_zeroed":
            log.info("peer %s: session keys wiped", name)
        else:
            log.debug("peer %s: %s %s", name, ev.kind, ev.detail if ev.detail is not None else "")

    def send_one(self, data, endpoint) -> None:
        sock = self.udp.socket_for(endpoint)
        if sock is None:
            self.stats.drops["no_socket_for_family"] += 1
            return
        try:
            sock.sendto(data, endpoint)
            self.stats.udp_sends += 1
        except BlockingIOError:
            self.stats.drops["udp_send_busy"] += 1
        except OSError as exc:
            self.stats.drops["udp_send_error"] += 1
            log.debug("send to %s failed: %s", _fmt_endpoint(endpoint), exc)

    def write_plain(self, packet) -> None:
        """Write one IP packet to the TUN (with an empty vnet header when in use)."""
        self._tun_write([_EMPTY_VNET, packet] if self.vnet else [packet])

    def _tun_write(self, parts) -> None:
        try:
            os.writev(self.tun.fd, parts)
            self.stats.tun_writes += 1
        except BlockingIOError:
            self.stats.drops["tun_write_busy"] += 1
        except OSError as exc:
            self.stats.drops["tun_write_error"] += 1
            log.debug("tun write failed: %s", exc)

    # ------------------------------------------------------------------
    # TUN -> UDP
    # ------------------------------------------------------------------

    def from_tun(self, now: float) -> int:
        device = self.device
        rbuf, rview = self.rbuf, self.rview
        tun_fd = self.tun.fd
        splitter = self.splitter
        train = self.train
        tview = train.view
        mtu = device.mtu
        lookup = device.allowed_ips.lookup
        touched: dict = {}
        vnet = self.vnet
        stats = self.stats
        budget = TUN_BYTES_PER_TURN
        for _ in range(TUN_READS_PER_TURN):
            if budget <= 0:
                break
            try:
                n = os.readv(tun_fd, [rbuf])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                raise
            budget -= n
            if vnet:
                try:
                    count = splitter.load(rbuf, 0, n)
                except OffloadError:
                    stats.drops["bad_super_packet"] += 1
                    continue
                ip = VNET_HDR_LEN
            else:
                count = 1
                ip = 0
            # Destination: every segment of a super-packet shares it.
            v = rbuf[ip] >> 4
            if v == 4 and n - ip >= 20:
                peer = lookup(rview[ip + 16:ip + 20])
            elif v == 6 and n - ip >= 40:
                peer = lookup(rview[ip + 24:ip + 40])
            else:
                stats.drops["not_ip"] += 1
                continue
            if peer is None:
                stats.drops["no_route"] += 1
                continue
            kp = peer.current
            endpoint = peer.endpoint
            if kp is None or endpoint is None or not kp.can_send(now, count):
                # The core stages the packets and starts a handshake.
                for i in range(count):
                    if vnet:
                        ln = splitter.write(i, self.pbuf, 0)
                        pkt = bytes(self.pview[:ln])
                    else:
                        pkt = bytes(rview[:n])
                    self.perform(device.send_packet(pkt, now), now)
                continue
            if train.endpoint != endpoint or train.closed:
                self.flush_train()
                train.endpoint = endpoint
            aead = kp.send_aead
            remote = kp.remote_index
            counter = kp.send_counter
            sent = 0
            for i in range(count):
                pos = train.pos
                start = pos + TRANSPORT_HEADER_SIZE
                if vnet:
                    ln = splitter.write(i, tview, start)
                else:
                    ln = n
                    tview[start:start + n] = rview[:n]
                padded = ln + ((-ln) % PADDING_MULTIPLE)
                if padded > mtu:
                    padded = ln if ln > mtu else mtu
                if padded != ln:
                    tview[start + ln:start + padded] = bytes(padded - ln)
                size = padded + 32
                # Keep the GSO rule: equal sizes, only the last one smaller.
                if train.count and (size > train.seg or train.pos + size > MAX_UDP_PAYLOAD
                                    or train.count >= GSO_MAX_SEGMENTS):
                    # Move this datagram's plaintext to the front of a new train.
                    chunk = bytes(tview[start:start + padded])
                    self.flush_train()
                    train.endpoint = endpoint
                    pos = 0
                    start = TRANSPORT_HEADER_SIZE
                    tview[start:start + padded] = chunk
                _HDR.pack_into(tview, pos, MESSAGE_TRANSPORT_DATA, remote, counter)
                aead.encrypt_into(_NONCE.pack(0, counter), tview[start:start + padded], None,
                                  tview[start:start + padded + 16])
                counter += 1
                if train.count == 0:
                    train.seg = size
                elif size < train.seg:
                    train.closed = True
                train.count += 1
                train.pos = pos + size
                sent += size
            kp.send_counter = counter
            stats.tx_packets += count
            t = touched.get(peer)
            touched[peer] = sent if t is None else t + sent
        self.flush_train()
        for peer, nbytes in touched.items():
            out: list = []
            peer.note_sent(now, nbytes, True, out)
            stats.tx_bytes += nbytes
            if out:
                self.perform(device._account(out), now)
        return TUN_BYTES_PER_TURN - budget

    def flush_train(self) -> None:
        train = self.train
        if train.count:
            endpoint = train.endpoint
            sock = self.udp.socket_for(endpoint)
            if sock is None:
                self.stats.drops["no_socket_for_family"] += train.count
            else:
                try:
                    send_gso(sock, train.view[:train.pos], train.seg, endpoint)
                    self.stats.udp_sends += 1
                except BlockingIOError:
                    self.stats.drops["udp_send_busy"] += train.count
                except OSError as exc:
                    self.stats.drops["udp_send_error"] += train.count
                    log.debug("send to %s failed: %s", _fmt_endpoint(endpoint), exc)
        train.reset()

    # ------------------------------------------------------------------
    # UDP -> TUN
    # ------------------------------------------------------------------

    def from_udp(self, sock, now: float) -> int:
        device = self.device
        ubuf, uview = self.ubuf, self.uview
        pview = self.pview
        indices = device.indices
        lookup = device.allowed_ips.lookup
        coalescer = self.coalescer
        stats = self.stats
        drops = stats.drops
        seen: dict = {}  # keypair -> [bytes, data?, endpoint]
        last_kp = None
        last_receiver = -1
        budget = UDP_BYTES_PER_TURN
        for _ in range(UDP_READS_PER_TURN):
            if budget <= 0:
                break
            try:
                n, seg, addr = recv_batch(sock, ubuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                # ICMP errors surface here as ECONNREFUSED etc.: not fatal.
                drops["udp_recv_error"] += 1
                continue
            budget -= n
            if seg <= 0:
                seg = n
            off = 0
            while off < n:
                dlen = min(seg, n - off)
                d_off = off
                off += dlen
                if ubuf[d_off] != MESSAGE_TRANSPORT_DATA or dlen < 32:
                    self._queue_handshake(bytes(uview[d_off:d_off + dlen]), addr)
                    continue
                if ubuf[d_off + 1] or ubuf[d_off + 2] or ubuf[d_off + 3]:
                    drops["malformed"] += 1
                    continue
                receiver, counter = _RECV_HDR.unpack_from(ubuf, d_off + 4)
                if receiver == last_receiver:
                    kp = last_kp
                else:
                    kp = indices.get(receiver)
                    if type(kp) is not Keypair:
                        drops["unknown_receiver"] += 1
                        continue
                    if not kp.can_receive(now):
                        drops["expired_key"] += 1
                        continue
                    last_kp, last_receiver = kp, receiver
                if not kp.replay.check(counter):
                    drops["replayed"] += 1
                    continue
                plen = dlen - 32
                try:
                    kp.recv_aead.decrypt_into(
                        _NONCE.pack(0, counter), uview[d_off + 16:d_off + dlen], None, pview[:plen]
                    )
                except InvalidTag:
                    drops["authentication"] += 1
                    continue
                if not kp.replay.update(counter):
                    drops["replayed"] += 1
                    continue
                entry = seen.get(kp)
                if entry is None:
                    entry = seen[kp] = [0, False, addr]
                entry[0] += dlen
                entry[2] = addr
                stats.rx_packets += 1
                if plen == 0:
                    continue  # keepalive
                entry[1] = True
                ilen = inner_length(pview[:plen])
                if ilen == 0 or ilen > plen:
                    drops["invalid_inner_packet"] += 1
                    continue
                v = self.pbuf[0] >> 4
                src = pview[12:16] if v == 4 else pview[8:24]
                if lookup(src) is not kp.peer:
                    drops["disallowed_source"] += 1
                    continue
                if self.vnet:
                    coalescer.add(pview[:ilen])
                else:
                    self.write_plain(pview[:ilen])
        if self.vnet:
            self.flush_coalescer()
        for kp, (nbytes, data, addr) in seen.items():
            stats.rx_bytes += nbytes
            out: list = []
            kp.peer.note_received(kp, now, addr, nbytes, data, out)
            if out:
                self.perform(device._account(out), now)
        return UDP_BYTES_PER_TURN - budget

    def flush_coalescer(self) -> None:
        write = self._tun_write
        for buf in self.coalescer.flush():
            write((buf,))

    # ------------------------------------------------------------------
    # handshakes, off the fast path
    # ------------------------------------------------------------------

    def _queue_handshake(self, data: bytes, addr) -> None:
        if len(self.handshakes) >= HANDSHAKE_QUEUE_MAX:
            self.stats.drops["handshake_queue_full"] += 1
            return
        self.handshakes.append((data, addr))
        if len(self.handshakes) > self.stats.handshakes_queued_max:
            self.stats.handshakes_queued_max = len(self.handshakes)

    def process_handshakes(self, now: float) -> None:
        device = self.device
        if len(self.handshakes) >= UNDER_LOAD_QUEUE:
            self._under_load_until = now + UNDER_LOAD_SECONDS
        under_load = now < self._under_load_until
        # Under load most messages get a cookie reply (no X25519), so more fit in a turn.
        budget = 8 * HANDSHAKE_BUDGET if under_load else HANDSHAKE_BUDGET
        for _ in range(min(budget, len(self.handshakes))):
            data, addr = self.handshakes.popleft()
            actions = device.receive_datagram(data, addr, now, under_load)
            for a in actions:
                if type(a) is SendDatagram and a.peer is None:
                    self.stats.cookie_replies += 1
            self.perform(actions, now)


def _fmt_endpoint(endpoint) -> str:
    if endpoint is None:
        return "(none)"
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_name(peer) -> str:
    if peer is None:
        return "?"
    if peer.name:
        return peer.name
    from .protocol.crypto import encode_key

    return encode_key(peer.public_key)[:8] + "…"
