"""UDP sockets for the data plane: one IPv4 and one IPv6 socket on one port,
UDP GRO on receive, UDP GSO on send.

Rules this module keeps:
- Two sockets, the IPv6 one with IPV6_V6ONLY, as wireguard-go does: the
  IPv6 socket never sees v4-mapped addresses, and an IPv4 peer is always
  sent to from the IPv4 socket. `normalize()` turns a v4-mapped address
  given by a user ("::ffff:192.0.2.1") into the plain IPv4 one, and
  `UdpEndpoint.socket_for()` picks the socket by the address's family.
- Addresses are what Python's socket module gives and takes: (host, port)
  for IPv4, (host, port, flowinfo, scope_id) from the IPv6 socket.
- Sockets are non-blocking; `recv_batch` raises BlockingIOError when empty.
- `send_gso` sends a train of equal-sized datagrams (the last may be
  shorter) in one sendmsg with a UDP_SEGMENT cmsg. If the kernel refuses
  GSO for a socket (EIO: no checksum offload on the route; EINVAL), that
  socket is remembered and later trains go out one sendto per datagram.
- Each socket carries the classic BPF filter of tunnel.udpfilter (attached
  before bind, so nothing reaches it unjudged): what cannot be a WireGuard
  message is dropped by the kernel; `kernel_drops()` counts those together
  with the datagrams dropped for a full receive buffer.
- `rebind(port)` moves to another port (as `wg set listen-port` does):
  the new sockets are bound before the old ones close, so a port that
  cannot be had raises and leaves everything as it was; `set_fwmark(mark)`
  marks every socket from then on (`wg set fwmark`).
- Bound to given addresses (host4/host6, e.g. a virtual IP that moves
  between gateways), every socket of that family binds there with
  IP_FREEBIND, so it can bind before the address is on an interface; the
  kernel then receives only what is sent to that address and sends every
  reply, GSO trains included, from it (a stock peer drops replies from any
  other address). While the address is not local, sends and the pinned
  sockets' connect fail (ENETUNREACH): counted as send errors, never fatal.
- Only the Linux socket options are used; there is no portable fallback.
"""

import errno
import socket
import struct
import sys
import weakref

from . import udpfilter

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_MARK = 36
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

# The kernel accepts at most UDP_MAX_SEGMENTS datagrams per GSO send (64
# before Linux 6.9, 128 since) and 65507 bytes of UDP payload in all.
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65507

# Sized for the largest GRO train; recv_batch truncates beyond this.
RECV_BUFFER_SIZE = 65536

SO_ATTACH_REUSEPORT_CBPF = 51
IP_FREEBIND = 15  # SOL_IP; the kernel honours it on IPv6 sockets too


class _FirstSocket:
    """A reuseport program that picks socket 0 of the group (the listening socket): `ret #0`."""

    def __init__(self):
        import ctypes

        self._code = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0), 8)
        self.prog = struct.pack("@HP", 1, ctypes.addressof(self._code))


_FIRST_SOCKET = _FirstSocket()

_SEGMENT = struct.Struct("=H")  # UDP_SEGMENT cmsg: a u16 in host order
_ANC_SIZE = socket.CMSG_SPACE(4)  # UDP_GRO cmsg: an int
_NO_GSO = weakref.WeakSet()
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP)


def normalize(addr: tuple) -> tuple:
    """(host, port) with a v4-mapped IPv6 host turned into plain IPv4."""
    host = addr[0]
    if host[:7].lower() == "::ffff:" and "." in host:
        return (host[7:], addr[1])
    return addr


class UdpEndpoint:
    """The IPv4 and IPv6 sockets of one listening port, and the pinned sockets of established peers.

    `UdpEndpoint(port=0, fwmark=0, host4="0.0.0.0", host6="::", v4=True,
    v6=True, buffer_size=8 MiB, gro=True, filter=True, pinning=True,
    freebind=False)`; freebind lets host4/host6 be addresses that are not
    (yet) on any interface.
    `.sock4` / `.sock6` (None when that family is disabled or the host has
    no IPv6), `.port` (the port both got; with port 0 the IPv6 socket binds
    the one the IPv4 socket was given, retrying a new one if it is taken),
    `.gro` (UDP_GRO accepted on every socket).

    Pinning: `pin(endpoints)` gives each endpoint a socket of its own on the
    same port, connected to it (SO_REUSEPORT), so the kernel queues that
    peer's datagrams apart from everyone else's: a flood at the port fills
    the listening socket's buffer, never an established session's. The
    listening sockets share their port only with our own pinned sockets: a
    plain bind checks first that the port is free (so a second daemon still
    gets EADDRINUSE), and a reuseport program sends every unconnected
    datagram to the listening socket, whoever else might join the group.
    """

    def __init__(self, port: int = 0, fwmark: int = 0, host4: str = "0.0.0.0",
                 host6: str = "::", v4: bool = True, v6: bool = True,
                 buffer_size: int = 8 << 20, gro: bool = True, filter: bool = True,
                 pinning: bool = True, freebind: bool = False):
        if not (v4 or v6):
            raise ValueError("need at least one address family")
        self.sock4 = self.sock6 = None
        self.gro = gro
        self.filter = filter
        self.pinning = pinning
        self.freebind = freebind
        self._buffer_size, self._fwmark = buffer_size, fwmark
        self._families = (v4, v6)
        self._hosts = {socket.AF_INET: host4, socket.AF_INET6: host6}
        self._pinned: dict[tuple, socket.socket] = {}
        self._by_fd: dict[int, socket.socket] = {}
        self._closed_drops = 0  # what pinned sockets had counted when they were closed
        attempts = 10 if port == 0 else 1
        for attempt in range(attempts):
            try:
                self._bind(port, host4, host6, v4, v6, buffer_size, fwmark)
                break
            except OSError as e:
                self.close()
                if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        self._by_fd = {s.fileno(): s for s in self.sockets()}

    def _bind(self, port, host4, host6, v4, v6, buffer_size, fwmark):
        if v4:
            self.sock4 = self._listen(socket.AF_INET, host4, port)
            port = self.sock4.getsockname()[1]
        if v6:
            try:
                s = self._listen(socket.AF_INET6, host6, port)
            except OSError as e:
                if e.errno != errno.EAFNOSUPPORT or not v4:
                    raise
                s = None  # kernel without IPv6: carry on with IPv4 only
            if s is not None:
                self.sock6 = s
                port = s.getsockname()[1]
        self.port = port

    def _listen(self, family, host, port):
        if self.pinning:
            # A plain bind first: the port must be free, as without sharing, and port 0 gets its number.
            probe = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.freebind:
                    probe.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                probe.bind((host, port))
                port = probe.getsockname()[1]
            finally:
                probe.close()
        s = self._open(family, self._buffer_size, self._fwmark)
        try:
            s.bind((host, port))
            if self.pinning:
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, _FIRST_SOCKET.prog)
        except BaseException:
            s.close()
            raise
        return s

    def _open(self, family, buffer_size, fwmark):
        s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
        try:
            for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                                 (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
                # FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN.
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, buffer_size)
                except PermissionError:
                    s.setsockopt(socket.SOL_SOCKET, plain, buffer_size)
            if fwmark:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.freebind:
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            if self.pinning:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.gro:
                try:
                    s.setsockopt(SOL_UDP, UDP_GRO, 1)
                except OSError:
                    self.gro = False  # before Linux 5.0: plain datagrams
            if self.filter:
                udpfilter.attach(s)
        except BaseException:
            s.close()
            raise
        return s

    def sockets(self) -> list:
        """The listening sockets (the pinned ones are not listed)."""
        return [s for s in (self.sock4, self.sock6) if s is not None]

    # -- changes while running ----------------------------------------------------

    def rebind(self, port: int) -> tuple[list[int], list[int]]:
        """Listen on PORT from now on (0: a free one); returns (descriptors opened, descriptors closed).

        The pinned sockets are on the old port and close with the listening
        ones (the caller pins again). OSError (EADDRINUSE...) changes nothing.
        """
        if port and port == self.port:
            return [], []
        v4, v6 = self._families
        fresh = UdpEndpoint(port, self._fwmark, self._hosts[socket.AF_INET], self._hosts[socket.AF_INET6],
                            v4, v6, self._buffer_size, self.gro, self.filter, self.pinning, self.freebind)
        closed = list(self._by_fd)
        for s in [*self.sockets(), *self._pinned.values()]:
            self._closed_drops += udpfilter.socket_drops(s)
            s.close()
        self._pinned.clear()
        self.sock4, self.sock6, self.port, self.gro = fresh.sock4, fresh.sock6, fresh.port, fresh.gro
        self._by_fd = {s.fileno(): s for s in self.sockets()}
        fresh.sock4 = fresh.sock6 = None  # they are ours now
        fresh._by_fd = {}
        return list(self._by_fd), closed

    def set_fwmark(self, mark: int) -> None:
        """SO_MARK = MARK (0: none) on every socket, and on those opened later."""
        for s in [*self.sockets(), *self._pinned.values()]:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        self._fwmark = mark

    @property
    def fwmark(self) -> int:
        return self._fwmark

    # -- pinned peers -------------------------------------------------------------

    def pin(self, endpoints) -> tuple[list[int], list[int]]:
        """Give each of these endpoints a connected socket of its own, and no other endpoint one.

        Returns (descriptors opened, descriptors closed) for the caller's
        epoll. An endpoint that cannot be pinned (its family has no
        listening socket, the kernel refuses) keeps using the listening
        socket: pinning only ever moves a peer's datagrams to a queue of
        their own.
        """
        wanted = {}
        if self.pinning:
            for ep in endpoints:
                ep = normalize(ep)
                wanted[_pin_key(ep)] = ep
        closed = []
        for key in [k for k in self._pinned if k not in wanted]:
            s = self._pinned.pop(key)
            fd = s.fileno()
            self._by_fd.pop(fd, None)
            self._closed_drops += udpfilter.socket_drops(s)
            s.close()
            closed.append(fd)
        opened = []
        for key, ep in wanted.items():
            if key in self._pinned:
                continue
            s = self._connect(ep)
            if s is not None:
                self._pinned[key] = s
                self._by_fd[s.fileno()] = s
                opened.append(s.fileno())
        return opened, closed

    def pinned(self) -> list[tuple]:
        return list(self._pinned)

    def _connect(self, ep: tuple):
        v6 = ":" in ep[0]
        family = socket.AF_INET6 if v6 else socket.AF_INET
        if (self.sock6 if v6 else self.sock4) is None:
            return None
        try:
            s = self._open(family, self._buffer_size, self._fwmark)
        except OSError:
            return None
        try:
            s.bind((self._hosts[family], self.port))
            s.connect(ep)
        except OSError:
            s.close()
            return None
        return s

    # -- the data plane's Bind (tunnel.dataplane.io) ---------------------------

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def recv(self, fd: int, buf) -> tuple:
        return recv_batch(self._by_fd[fd], buf)

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped at our sockets so far (the filter's and a full buffer's, together)."""
        return self._closed_drops + sum(udpfilter.socket_drops(s) for s in self._by_fd.values())

    def send_train(self, view, segment_size: int, addr: tuple) -> None:
        sock, addr = self._route(addr)
        send_gso(sock, view, segment_size, addr)

    def send(self, data, addr: tuple) -> None:
        sock, addr = self._route(addr)
        sock.sendto(data, addr)

    def socket_for(self, addr: tuple):
        """The socket to send to `addr` from (None if that family is off)."""
        return self.sock6 if ":" in addr[0] else self.sock4

    def _route(self, addr: tuple) -> tuple:
        """The socket and address to send to addr: a v4-mapped IPv6 address goes out of the IPv4
        socket as plain IPv4 (the IPv6 socket is V6ONLY: sending it there fails with ENETUNREACH)."""
        host = addr[0]
        if ":" in host:
            if host[:7].lower() == "::ffff:" and "." in host:
                sock, addr = self.sock4, (host[7:], addr[1])
            else:
                sock = self.sock6
        else:
            sock = self.sock4
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, "no socket for this address family")
        return sock, addr

    def close(self) -> None:
        for s in [*self.sockets(), *self._pinned.values()]:
            s.close()
        self.sock4 = self.sock6 = None
        self._pinned.clear()
        self._by_fd.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pin_key(ep: tuple) -> tuple:
    """An endpoint as recvmsg reports it, reduced to what identifies it: host, port (and an IPv6 scope)."""
    if ":" in ep[0]:
        return (ep[0], ep[1], ep[3] if len(ep) > 3 else 0)
    return (ep[0], ep[1])


def recv_batch(sock, buf) -> tuple:
    """Receives one datagram or one GRO train into buf.

    Returns (nbytes, segment_size, address): the train is nbytes long and
    made of datagrams of segment_size bytes, the last one possibly shorter;
    a plain datagram gives segment_size == nbytes. buf should hold
    RECV_BUFFER_SIZE bytes; the kernel truncates what does not fit.
    Raises BlockingIOError when nothing is queued.
    """
    nbytes, anc, _, addr = sock.recvmsg_into((buf,), _ANC_SIZE)
    for level, kind, data in anc:
        if level == SOL_UDP and kind == UDP_GRO:
            return nbytes, int.from_bytes(data[:4], sys.byteorder), addr
    return nbytes, nbytes, addr


def send_gso(sock, view, segment_size: int, addr: tuple) -> None:
    """Sends view as datagrams of segment_size bytes (the last may be
    shorter) to addr, in as few system calls as the kernel allows.

    OSError other than GSO being refused propagates (BlockingIOError when
    the socket buffer is full); datagrams before the failing call were sent.
    """
    n = len(view)
    if n <= segment_size:
        sock.sendto(view, addr)
        return
    if sock not in _NO_GSO:
        step = segment_size * MAX_GSO_SEGMENTS
        if step > MAX_GSO_BYTES:
            step = MAX_GSO_BYTES - MAX_GSO_BYTES % segment_size
        cmsg = ((SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment_size)),)
        try:
            for off in range(0, n, step):
                sock.sendmsg((view[off:off + step],), cmsg, 0, addr)
            return
        except OSError as e:
            if e.errno not in _GSO_REFUSED or off:
                raise
            _NO_GSO.add(sock)
    for off in range(0, n, segment_size):
        sock.sendto(view[off:off + segment_size], addr)


def gso_refused(sock) -> bool:
    """True once the kernel refused GSO on this socket."""
    return sock in _NO_GSO


def disable_gso(sock) -> None:
    """Sends to this socket's peers one datagram per call from now on."""
    _NO_GSO.add(sock)
