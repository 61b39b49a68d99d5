"""Following a TUN device's link from its file descriptor alone: its name, its namespace, its MTU.

An interface served by `tunnel-wg` is configured from outside (`ip link set
mtu`), and may be moved to another network namespace after it was created
(`ip link set IFACE netns NS`: wireguard.com/netns), so the daemon knows it
only through the TUN fd it holds:
- TUNGETIFF on the fd gives the link's current name (it may be renamed);
- TUNGETDEVNETNS gives a descriptor of the namespace the link is in now;
- SIOCGIFMTU by that name, on a socket of that namespace, gives its MTU.

Rules kept here:
- the caller's thread never leaves its namespace: a socket in another one
  is made by a short-lived thread that enters it (setns is per thread) and
  ends; the UDP sockets of the data plane stay where the daemon started;
- nothing is held open in another namespace (no socket, no namespace fd, no
  thread living there): each would keep that namespace alive after `ip
  netns del`, and with it the link, and the daemon would never learn it is
  gone;
- at home the kernel tells us (a netlink socket on RTMGRP_LINK, read in the
  data-plane loop); abroad nothing can without holding that namespace, so
  the link is looked at once a second (`tick`);
- a link that is gone is not this module's business: the TUN fd reads
  EBADFD then, and the data plane ends (tunnel.dataplane.io.TunGone).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from typing import Callable

log = logging.getLogger("tunnel")

TUNGETIFF = 0x800454D2
TUNGETDEVNETNS = 0x54E3  # _IO('T', 227), Linux 5.2
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
CLONE_NEWNET = 0x40000000
RTMGRP_LINK = 1
IFNAMSIZ = 16
_IFREQ = struct.Struct("16si12x")  # struct ifreq: name, then an int (ifr_mtu), padded to 40 bytes

_libc = ctypes.CDLL(None, use_errno=True)


def tun_name(fd: int) -> str:
    """The current name of the TUN device behind FD; OSError(EBADFD) once its link is gone."""
    raw = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return raw[:IFNAMSIZ].split(b"\0", 1)[0].decode()


def own_namespace() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _ifreq_mtu(sock: socket.socket, name: str) -> int:
    raw = fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ.pack(name.encode(), 0))
    return _IFREQ.unpack(raw)[1]


def set_mtu(name: str, mtu: int) -> None:
    """SIOCSIFMTU on NAME in the caller's namespace (no netlink library needed for one number)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        fcntl.ioctl(s, SIOCSIFMTU, _IFREQ.pack(name.encode(), mtu))


def _mtu_abroad(ns_fd: int, name: str) -> int | None:
    """The MTU of NAME in the namespace NS_FD, asked by a thread that enters it and ends."""
    result: list[int] = []

    def probe() -> None:
        if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
            return
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                               socket.NETLINK_ROUTE) as s:
                result.append(_ifreq_mtu(s, name))
        except OSError:
            pass  # renamed or gone in the meantime: the next look sees it

    thread = threading.Thread(target=probe, name="linkwatch", daemon=True)
    thread.start()
    thread.join()
    return result[0] if result else None


class LinkWatch:
    """Tells `on_mtu(mtu)` the TUN's MTU at start and whenever it changes, wherever the link lives."""

    def __init__(self, tun_fd: int, on_mtu: Callable[[int], None]):
        self.tun_fd = tun_fd
        self.on_mtu = on_mtu
        self.home = own_namespace()
        self.abroad = False
        self.mtu: int | None = None
        self.name = tun_name(tun_fd)
        # Link changes at home; also what tells us the link left (RTM_DELLINK for a move).
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))
        self.check()

    def fileno(self) -> int:
        return self.sock.fileno()

    def on_readable(self) -> None:
        """Link news at home: drain it and look once (a burst of messages costs one look)."""
        while True:
            try:
                if not self.sock.recv(65536):
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOBUFS: we missed some; looking is all we do anyway
                if exc.errno != errno.ENOBUFS:
                    break
        self.check()

    def tick(self, now: float) -> None:
        """Once a second from the loop: only a link abroad needs it."""
        if self.abroad:
            self.check()

    def check(self) -> None:
        try:
            name = tun_name(self.tun_fd)
        except OSError:
            return  # gone: the data plane reads EBADFD and ends
        where = self.home
        mtu = None
        try:
            ns_fd = fcntl.ioctl(self.tun_fd, TUNGETDEVNETNS)
        except OSError:
            ns_fd = -1  # a kernel before 5.2: the link cannot have moved as far as we can tell
        try:
            if ns_fd >= 0:
                where = os.fstat(ns_fd).st_ino
            if where == self.home:
                try:
                    mtu = _ifreq_mtu(self.sock, name)
                except OSError:
                    mtu = None
            else:
                mtu = _mtu_abroad(ns_fd, name)
        finally:
            if ns_fd >= 0:
                os.close(ns_fd)
        abroad = where != self.home
        if abroad != self.abroad or name != self.name:
            log.info("%s: the link is %s%s", self.name,
                     "in another network namespace" if abroad else "in the daemon's namespace",
                     f", named {name}" if name != self.name else "")
        self.abroad, self.name = abroad, name
        if mtu is not None and mtu != self.mtu:
            self.mtu = mtu
            self.on_mtu(mtu)

    def close(self) -> None:
        self.sock.close()
