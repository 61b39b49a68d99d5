"""An in-memory TUN device and UDP network for the data plane (no root, no kernel).

As wireguard-go's tun/tuntest and conn/bindtest: two DataPlanes wired
together in one process, driven turn by turn (`DataPlane.service`) at a
clock the test moves. The fakes keep the kernel's shapes, so the data plane
runs exactly the code it runs over real devices:
- MemoryTun hands out what a test `inject`s (behind a vnet header when
  vnet_hdr: super-packets too) and records every write in `written`,
  checking the vnet header as the kernel would (EINVAL otherwise);
- a MemoryBind's `send_train` splits a GSO train into datagrams; the
  MemoryNet delivers them to the bind at the destination address, where a
  train of equal-sized datagrams (only the last smaller, at most 64) is
  read back in one `recv`, as UDP GRO gives it; a single `send` arrives
  alone;
- a MemoryBind judges what arrives with the socket filter's own program
  (tunnel.udpfilter, run by its reference interpreter: a train as one
  packet, as the kernel does) and counts what it refuses in
  `kernel_drops()`, unless made with filter=False;
- `pin(endpoints)` gives those sources a queue (and descriptor) of their
  own, as the connected sockets of tunnel.udp do;
- impairments only when a test asks: `MemoryNet.impair(datagrams, source,
  destination) -> datagrams` may drop, duplicate, reorder or rewrite them;
- each fake has a real eventfd that is readable while it has something to
  read, so `DataPlane.run` works over them too.
"""

from __future__ import annotations

import collections
import errno
import os
from typing import Callable

from .. import udpfilter
from ..offload import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET, VNET_HDR_LEN
from ..udp import MAX_GSO_SEGMENTS, _pin_key, normalize

GRO_MAX_BYTES = 65535


class _Readable:
    """An eventfd that is readable exactly while `pending` is true."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._set = False

    def update(self, pending: bool) -> None:
        if pending and not self._set:
            os.eventfd_write(self.fd, 1)
            self._set = True
        elif not pending and self._set:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                pass
            self._set = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemoryTun:
    """A TUN device in memory: `inject` what the kernel would give, read `written`."""

    def __init__(self, vnet_hdr: bool = True, uso: bool = False):
        self.vnet_hdr = vnet_hdr
        self.uso = uso and vnet_hdr
        self.inbox: collections.deque[bytes] = collections.deque()
        self.written: list[bytes] = []
        self._ready = _Readable()
        self.fd = self._ready.fd
        self.deleted = False

    def delete(self) -> None:
        """What `ip link del` does to a real one: readable, and every read and write fails EBADFD."""
        self.deleted = True
        self._ready.update(True)

    def inject(self, packet: bytes) -> None:
        self.inbox.append(bytes(packet))
        self._ready.update(True)

    def inject_plain(self, packet: bytes) -> None:
        """An IP packet as the kernel gives it: behind an empty vnet header when in use."""
        self.inject((bytes(VNET_HDR_LEN) if self.vnet_hdr else b"") + bytes(packet))

    def read_into(self, buf) -> int:
        if self.deleted:
            raise OSError(errno.EBADFD, "File descriptor in bad state")
        if not self.inbox:
            self._ready.update(False)
            raise BlockingIOError(errno.EAGAIN, "no packet")
        p = self.inbox.popleft()
        n = min(len(p), len(buf))
        buf[:n] = p[:n]
        self._ready.update(bool(self.inbox))
        return n

    def writev(self, parts) -> int:
        if self.deleted:
            raise OSError(errno.EBADFD, "File descriptor in bad state")
        data = b"".join(bytes(p) for p in parts)
        if self.vnet_hdr:
            if len(data) < VNET_HDR_LEN + 20:
                raise OSError(errno.EINVAL, "shorter than a vnet header and an IP header")
            _, gso_type, _, gso_size, _, _ = VNET.unpack_from(data, 0)
            if gso_type & 0x7F not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4) or (
                    gso_type != GSO_NONE and gso_size == 0):
                raise OSError(errno.EINVAL, "bad vnet header")
            if gso_type & 0x7F == GSO_UDP_L4 and not self.uso:
                raise OSError(errno.EINVAL, "UDP super-packet to a TUN without USO")
        self.written.append(data)
        return len(data)

    def take(self) -> list[bytes]:
        """Everything written since the last take."""
        out, self.written = self.written, []
        return out

    def close(self) -> None:
        self._ready.close()


class MemoryNet:
    """UDP between MemoryBinds, delivered at once and in order unless `impair` says otherwise."""

    def __init__(self) -> None:
        self.binds: dict[tuple, MemoryBind] = {}
        self.impair: Callable[[list[bytes], tuple, tuple], list[bytes]] | None = None
        self.undeliverable: list[tuple[tuple, bytes]] = []

    def bind(self, host: str, port: int, gro: bool = True, filter: bool = True) -> "MemoryBind":
        b = MemoryBind(self, (host, port), gro, filter)
        self.binds[(host, port)] = b
        return b

    def carry(self, datagrams: list[bytes], source: tuple, destination: tuple, train: bool) -> None:
        if self.impair is not None:
            datagrams = self.impair(datagrams, source, destination)
        dst = self.binds.get((destination[0], destination[1]))
        if dst is None:
            self.undeliverable.extend((destination, d) for d in datagrams)
            return
        dst.arrive(datagrams, source, train)


class MemoryBind:
    """One UDP port on a MemoryNet; `sent` logs (destination, datagram) for tests."""

    def __init__(self, net: MemoryNet, address: tuple, gro: bool = True, filter: bool = True):
        self.net = net
        self.address = address
        self.port = address[1]
        self.gro = gro
        self.filter = filter
        self.filtered = 0
        # The listening socket's queue; pinned sources have their own (fd -> queue).
        self.inbox: collections.deque[tuple[bytes, int, tuple]] = collections.deque()
        self.sent: list[tuple[tuple, bytes]] = []
        self._ready = _Readable()
        self._queues: dict[int, tuple[collections.deque, _Readable]] = {self._ready.fd: (self.inbox, self._ready)}
        self._pins: dict[tuple, int] = {}  # pinned source -> its fd

    # -- Bind ----------------------------------------------------------------

    def fds(self) -> list[int]:
        return list(self._queues)

    def queued(self) -> int:
        """Reads waiting, over all the queues."""
        return sum(len(q) for q, _ in self._queues.values())

    def ready_fds(self) -> list[int]:
        """The descriptors epoll would report readable now."""
        return [fd for fd, (q, _) in self._queues.items() if q]

    def recv(self, fd: int, buf) -> tuple[int, int, tuple]:
        inbox, ready = self._queues[fd]
        if not inbox:
            ready.update(False)
            raise BlockingIOError(errno.EAGAIN, "no datagram")
        data, seg, source = inbox.popleft()
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        ready.update(bool(inbox))
        return n, seg, source

    def pin(self, endpoints) -> tuple[list[int], list[int]]:
        wanted = {_pin_key(normalize(ep)) for ep in endpoints}
        closed = []
        for key in [k for k in self._pins if k not in wanted]:
            fd = self._pins.pop(key)
            _, ready = self._queues.pop(fd)
            ready.close()  # what was queued goes with the socket, as in the kernel
            closed.append(fd)
        opened = []
        for key in wanted - set(self._pins):
            ready = _Readable()
            self._pins[key] = ready.fd
            self._queues[ready.fd] = (collections.deque(), ready)
            opened.append(ready.fd)
        return opened, closed

    def pinned(self) -> list[tuple]:
        return list(self._pins)

    def send_train(self, view, segment_size: int, endpoint: tuple) -> None:
        data = bytes(view)
        datagrams = [data[i:i + segment_size] for i in range(0, len(data), segment_size)]
        self._send(datagrams, endpoint, True)

    def send(self, data, endpoint: tuple) -> None:
        self._send([bytes(data)], endpoint, False)

    def kernel_drops(self) -> int:
        return self.filtered

    # -- the network's side ----------------------------------------------------

    def _send(self, datagrams: list[bytes], endpoint: tuple, train: bool) -> None:
        self.sent.extend((endpoint, d) for d in datagrams)
        self.net.carry(datagrams, self.address, endpoint, train)

    def inject(self, datagram: bytes, source: tuple) -> None:
        """A datagram arrives from `source` (as a stranger on the network could send it)."""
        self.arrive([bytes(datagram)], source, False)

    def inject_train(self, data: bytes, segment_size: int, source: tuple) -> None:
        """A GRO train arrives as it is: datagrams of segment_size bytes, the last may be shorter."""
        self._queue(bytes(data), segment_size, source)

    def _queue(self, data: bytes, segment_size: int, source: tuple) -> None:
        """One datagram or GRO train reaches a socket (the source's pinned one, or the listening one);
        the filter judges it whole, as the kernel's does."""
        if self.filter and not udpfilter.accepts(data):
            self.filtered += 1
            return
        fd = self._pins.get(_pin_key(source), self._ready.fd) if self._pins else self._ready.fd
        inbox, ready = self._queues[fd]
        inbox.append((data, segment_size, source))
        ready.update(True)

    def arrive(self, datagrams: list[bytes], source: tuple, train: bool) -> None:
        if not (self.gro and train):
            for d in datagrams:
                self._queue(d, len(d), source)
        else:
            # GRO: runs of one size (the last of a run may be smaller), within the limits.
            run: list[bytes] = []
            for d in datagrams:
                if run and (len(d) > len(run[0]) or len(run[-1]) < len(run[0])
                            or len(run) >= MAX_GSO_SEGMENTS
                            or sum(map(len, run)) + len(d) > GRO_MAX_BYTES):
                    self._queue_run(run, source)
                    run = []
                run.append(d)
            if run:
                self._queue_run(run, source)

    def _queue_run(self, run: list[bytes], source: tuple) -> None:
        self._queue(b"".join(run), len(run[0]), source)

    def take_sent(self) -> list[tuple[tuple, bytes]]:
        out, self.sent = self.sent, []
        return out

    def close(self) -> None:
        for _, ready in self._queues.values():
            ready.close()
