"""UDP -> TUN: GRO trains opened by the core, TCP segments merged back into super-packets.

Rules kept here:
- a read gives one datagram or a whole GRO train; the core opens it in one
  call (tunnel.protocol.transport.open_batch), which judges every datagram
  on its own, so a coalesced train is never trusted as a whole;
- each authenticated packet goes straight into the Coalescer (or to the TUN
  without the vnet header), which merges TCP segments for one TUN write per
  ~40 packets, and UDP datagrams of one flow when the TUN takes USO; its
  output is written once per turn;
- handshake messages come back from the core only when their type and size
  are exactly a handshake's, and go to the loop's queue;
- work per turn is bounded: these bytes (about 4 GRO trains) or this many
  reads, whichever comes first - a flood of small datagrams must still be
  drained quickly or it fills the socket buffer and data is dropped there.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable

from ..offload import VNET_HDR_LEN, Coalescer
from ..protocol.transport import open_batch
from ..udp import RECV_BUFFER_SIZE
from . import drops as D

log = logging.getLogger("tunnel")

UDP_BYTES_PER_TURN = 256 << 10
UDP_READS_PER_TURN = 128

_EMPTY_VNET = bytes(VNET_HDR_LEN)


class Receiver:
    def __init__(self, device, tun, bind, perform: Callable[[list, float], None],
                 queue_handshake: Callable[[bytes, tuple], None]):
        self.device = device
        self.tun = tun
        self.bind = bind
        self.perform = perform
        self.queue_handshake = queue_handshake
        self.counters = device.counters
        self.vnet = tun.vnet_hdr
        # UDP datagrams merge too when the TUN takes UDP super-packets (USO, Linux 6.2+).
        self.coalescer = Coalescer(verify=False, uso=self.vnet and tun.uso)
        self.ubuf = bytearray(RECV_BUFFER_SIZE + 4096)
        self.uview = memoryview(self.ubuf)
        self.pview = memoryview(bytearray(RECV_BUFFER_SIZE))
        self.deliver = self.coalescer.add if self.vnet else self.write_plain

    def from_udp(self, fd: int, now: float, reads: int = UDP_READS_PER_TURN) -> int:
        """Read, open and deliver up to a turn's budget (bytes, and `reads` reads) from one socket;
        returns the bytes read."""
        device = self.device
        recv = self.bind.recv
        uview, pview = self.uview, self.pview
        deliver = self.deliver
        queue = self.queue_handshake
        drops = self.counters.drops
        actions: list = []
        budget = UDP_BYTES_PER_TURN
        for _ in range(reads):
            if budget <= 0:
                break
            try:
                n, seg, source = recv(fd, self.ubuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                drops[D.UDP_RECV_ERROR] += 1
                continue
            budget -= n
            open_batch(device, uview, 0, n, seg, source, pview, deliver, queue, now, actions)
        if self.vnet:
            self.flush()
        if actions:
            self.perform(actions, now)
        return UDP_BYTES_PER_TURN - budget

    def flush(self) -> None:
        write = self.write_tun
        for buf in self.coalescer.flush():
            write((buf,))

    def write_plain(self, packet) -> None:
        """Write one IP packet to the TUN (behind an empty vnet header when in use)."""
        self.write_tun((_EMPTY_VNET, packet) if self.vnet else (packet,))

    def write_tun(self, parts) -> None:
        try:
            self.tun.writev(parts)
            self.counters.tun_writes += 1
        except BlockingIOError:
            self.counters.drops[D.TUN_WRITE_BUSY] += 1
        except OSError as exc:
            self.counters.drops[D.TUN_WRITE_ERROR] += 1
            log.debug("tun write failed: %s", exc)
