"""TUN -> UDP: what the TUN gives is sealed by the core into UDP GSO trains.

Rules kept here:
- a TSO super-packet is split straight into the train buffer, segment by
  segment, by the offload Splitter, which the core calls as its `write`:
  the plaintext is put where its transport message will be, and the core
  seals it in place (tunnel.protocol.transport.seal);
- a train holds datagrams of one size to one endpoint (only the last may be
  smaller: the GSO rule), at most MAX_GSO_SEGMENTS and MAX_GSO_BYTES; the
  core's `datagram_size` says how big each segment's message will be, so
  the train is cut before sealing, never after;
- work per turn is bounded in bytes (TUN_BYTES_PER_TURN) so one busy
  direction cannot make the other wait; small packets are drained up to
  TUN_READS_PER_TURN reads a turn, or they overflow the TUN ring;
- a UDP datagram from our own port to the endpoint of the very peer it
  routes to is our own, come back because that endpoint is routed through
  this tunnel: it is dropped (ROUTING_LOOP), as the kernel refuses a route
  through the device itself, instead of being sealed again for ever. Only
  UDP packets are looked at, and only their ports unless the port is ours.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable

from ..offload import VNET_HDR_LEN, OffloadError, Splitter
from ..protocol.errors import NO_ROUTE
from ..protocol.transport import datagram_size, seal
from ..udp import MAX_GSO_BYTES, MAX_GSO_SEGMENTS
from . import drops as D
from .io import TunGone

log = logging.getLogger("tunnel")

# A TUN read is up to a 64 KB super-packet, so 128 KB fill GSO sends; more
# make everything else wait (the other direction's ACKs, a ping): 1 MB is
# ~4 ms of work, 128 KB ~0.5 ms.
TUN_BYTES_PER_TURN = 128 << 10
TUN_READS_PER_TURN = 256


class _Train:
    """One UDP GSO train being built: datagrams of equal size to one endpoint."""

    __slots__ = ("buf", "view", "pos", "count", "seg", "endpoint", "closed")

    def __init__(self):
        # A full train, plus room for the core to use as scratch when it stages
        # a super-packet's segments instead of sealing them.
        self.buf = bytearray(MAX_GSO_BYTES + VNET_HDR_LEN + 65536)
        self.view = memoryview(self.buf)
        self.reset()

    def reset(self) -> None:
        self.pos = 0
        self.count = 0
        self.seg = 0
        self.endpoint = None
        self.closed = False


class Sender:
    def __init__(self, device, tun, bind, perform: Callable[[list, float], None]):
        self.device = device
        self.tun = tun
        self.bind = bind
        self.perform = perform
        self.counters = device.counters
        self.vnet = tun.vnet_hdr
        self.splitter = Splitter()
        self.rbuf = bytearray(VNET_HDR_LEN + 65536)
        self.rview = memoryview(self.rbuf)
        self.train = _Train()
        self._plain = 0  # length of the plain packet in rbuf (no vnet header)
        self._plain_at = 0  # where it starts in rbuf

    def _write_plain(self, i: int, out, pos: int) -> int:
        n = self._plain
        at = self._plain_at
        out[pos:pos + n] = self.rview[at:at + n]
        return n

    def from_tun(self, now: float) -> int:
        """Read, seal and send up to a turn's budget; returns the bytes read."""
        device = self.device
        rbuf, rview = self.rbuf, self.rview
        read = self.tun.read_into
        splitter = self.splitter
        train = self.train
        tview = train.view
        mtu = device.mtu
        lookup = device.allowed_ips.lookup
        drops = self.counters.drops
        vnet = self.vnet
        actions: list = []
        budget = TUN_BYTES_PER_TURN
        for _ in range(TUN_READS_PER_TURN):
            if budget <= 0:
                break
            try:
                n = read(rbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                if exc.errno == errno.EBADFD:
                    self.flush()
                    raise TunGone() from None
                raise
            budget -= n
            if vnet and not (rbuf[0] or rbuf[1]) and n >= VNET_HDR_LEN + 20:
                # A plain packet with nothing for us to do (no GSO, no checksum to finish: a ping, a
                # DNS query): copied as it is, without the splitter.
                count = 1
                self._plain_at = ip = VNET_HDR_LEN
                self._plain = largest = n - VNET_HDR_LEN
                write = self._write_plain
            elif vnet:
                try:
                    count = splitter.load(rbuf, 0, n)
                except OffloadError:
                    drops[D.BAD_SUPER_PACKET] += 1
                    continue
                write = splitter.write
                largest = splitter.max_len
                ip = VNET_HDR_LEN
            else:
                count = 1
                self._plain_at = ip = 0
                self._plain = largest = n
                write = self._write_plain
            # Destination: every segment of a super-packet shares it.
            v = rbuf[ip] >> 4
            if v == 4 and n - ip >= 20:
                peer = lookup(rview[ip + 16:ip + 20])
            elif v == 6 and n - ip >= 40:
                peer = lookup(rview[ip + 24:ip + 40])
            else:
                drops[D.NOT_IP] += 1
                continue
            if peer is None:
                drops[NO_ROUTE] += 1
                continue
            if (rbuf[ip + 9] if v == 4 else rbuf[ip + 6]) == 17 and self._looped(ip, v, peer):
                drops[D.ROUTING_LOOP] += count
                continue
            size = datagram_size(largest, mtu)
            if size > MAX_GSO_BYTES:
                drops[D.TOO_BIG] += count
                continue
            endpoint = peer.endpoint
            i = 0
            while i < count:
                if train.count and (train.closed or train.seg != size or train.endpoint != endpoint):
                    self.flush()
                fit = min(count - i, MAX_GSO_SEGMENTS - train.count, (MAX_GSO_BYTES - train.pos) // size)
                if fit <= 0:
                    self.flush()
                    continue
                start = train.pos
                end = seal(device, peer, write, i, fit, tview, start, now, actions)
                i += fit
                if end == start:
                    continue  # no session yet: the core staged them and started a handshake
                if train.count == 0:
                    train.endpoint = endpoint
                    train.seg = size
                train.count += fit
                train.pos = end
                if end - start < size * fit:
                    train.closed = True  # the last one is smaller: nothing may follow it
            if actions:
                self.flush()  # what the core asks for (a handshake) goes after the data it follows
                self.perform(actions, now)
                actions = []
        self.flush()
        return TUN_BYTES_PER_TURN - budget

    def _looped(self, ip: int, v: int, peer) -> bool:
        """A UDP packet read from the TUN: is it one of ours to PEER (from our port to its endpoint)?"""
        rbuf = self.rbuf
        udp = ip + ((rbuf[ip] & 15) * 4 if v == 4 else 40)
        if (rbuf[udp] << 8) | rbuf[udp + 1] != self.bind.port:
            return False
        endpoint = peer.endpoint
        if endpoint is None or (rbuf[udp + 2] << 8) | rbuf[udp + 3] != endpoint[1]:
            return False
        host = endpoint[0]
        if v == 4:
            if ":" in host:  # a v4-mapped endpoint goes out of the IPv4 socket as plain IPv4
                host = host.rpartition(":")[2]
            return socket.inet_ntop(socket.AF_INET, bytes(rbuf[ip + 16:ip + 20])) == host
        try:
            return socket.inet_pton(socket.AF_INET6, host) == bytes(rbuf[ip + 24:ip + 40])
        except OSError:
            return False

    def flush(self) -> None:
        train = self.train
        if train.count:
            try:
                self.bind.send_train(train.view[:train.pos], train.seg, train.endpoint)
                self.counters.udp_sends += 1
            except BlockingIOError:
                self.counters.drops[D.UDP_SEND_BUSY] += train.count
            except OSError as exc:
                reason = D.NO_SOCKET_FOR_FAMILY if exc.errno == errno.EAFNOSUPPORT else D.UDP_SEND_ERROR
                self.counters.drops[reason] += train.count
                log.debug("send to %s failed: %s", train.endpoint, exc)
        train.reset()
