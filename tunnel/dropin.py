"""`tunnel-wg IFACE`: a userspace WireGuard with wireguard-go's command line, for wg-quick and its kin.

Whatever drives a userspace WireGuard (stock wg-quick through
WG_QUICK_USERSPACE_IMPLEMENTATION, innernet, Kilo, container images) starts
`PROGRAM IFACE`, waits for it to return, then configures the interface from
outside: `wg` over the UAPI socket, `ip` for addresses, MTU and routes. So:

    create(IFACE)   the TUN link IFACE (no address, down, MTU 1420 as
                    wireguard-go's), a UDP port (any free one until `wg set
                    listen-port`), a Device with no private key and no peer,
                    the UAPI socket /var/run/wireguard/IFACE.sock
    detach()        (unless foreground) the caller returns 0 once all exist
    serve()         the data plane until the link is deleted (`ip link del`,
                    or the namespace it was moved to went), or SIGTERM/SIGINT;
                    then the socket is removed and the TUN closed

Rules kept here:
- one data plane: the same DataPlane, offloads and batching as `tunnel up`;
  only what is around it differs (no config file, no routes, no journal);
- everything is set live from outside: the private key, listen port and
  fwmark through uapi.Live (the Device takes a new key, the sockets rebind
  or get a new SO_MARK), the MTU by following the link (tunnel.linkwatch);
- the link may live in another namespace than the daemon (and move there
  after start): nothing here asks the kernel about it by name from the
  daemon's namespace after creation, and the UDP sockets stay at home;
- the daemon changes nothing in the OS but its TUN link and its socket file,
  so it keeps no undo journal: the link goes with the process (a
  non-persistent TUN), and a socket file a crash leaves is refused by `wg`
  and replaced by the next start (tunnel.control);
- a bad start (name too long or taken, no permission for /dev/net/tun, the
  socket directory not writable, the name served from another namespace)
  is one DropInError line, with everything made so far closed again.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

from . import control, droplog, linkwatch, memory, sdnotify, uapi
from .dataplane import DataPlane, log_event
from .protocol import Device
from .protocol.constants import DEFAULT_MTU
from .tun import Tun, TunError
from .udp import UdpEndpoint

log = logging.getLogger("tunnel")

IFNAMSIZ = 16
# As tunnel up's (interface.py): a small buffer keeps the RTT under load low.
UDP_BUFFER = int(os.environ.get("TUNNEL_UDP_BUFFER", 256 << 10))


class DropInError(RuntimeError):
    """The interface could not be created; the message says why, in one line."""


def check_name(name: str) -> None:
    """The kernel's rule for a link name (dev_valid_name), said before it is tried."""
    if not name:
        raise DropInError("an interface name is needed")
    if len(name.encode()) >= IFNAMSIZ:
        raise DropInError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise DropInError(f"interface name {name!r} is not valid (no '/', ':' or blanks; not '.' or '..')")


@dataclass
class DropIn:
    """One interface served for outside configuration."""

    name: str
    tun: Tun
    udp: UdpEndpoint
    device: Device
    plane: DataPlane
    server: control.ControlServer
    watch: linkwatch.LinkWatch
    context: uapi.Context

    def serve(self) -> None:
        """Run until the link is deleted or SIGTERM/SIGINT/SIGHUP; then close everything."""
        old = {}
        summary = None
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old[sig] = signal.signal(sig, lambda s, f: self.plane.stop())
            summary = droplog.DropSummary(self.name, self.plane.stats)
            sdnotify.notify(f"READY=1\nSTATUS={self.name} up")
            memory.give_back()  # what only the bring-up needed: RSS from here on is the idle daemon's
            self.plane.run()
            if self.plane.tun_gone:
                log.info("%s: the interface was deleted; exiting", self.name)
            else:
                log.info("%s: stopping", self.name)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if summary is not None:
                summary.close()
            self.close()

    def close(self) -> None:
        """Remove the socket file, close the sockets and the TUN (which deletes a link still there)."""
        for step in (self.server.close, self.watch.close, self.udp.close, self.plane.close, self.tun.close):
            try:
                step()
            except OSError as exc:
                log.warning("%s: closing: %s", self.name, exc)


def create(name: str, *, socket_dir: str = control.SOCKET_DIR, vnet_hdr: bool = True) -> DropIn:
    """The TUN link NAME, a UDP port, a keyless Device, the UAPI socket; DropInError if any cannot be had."""
    check_name(name)
    try:
        socket.if_nametoindex(name)
    except OSError:
        pass
    else:
        raise DropInError(f"{name} already exists")
    made: list = []
    try:
        try:
            tun = Tun(name, vnet_hdr=vnet_hdr, offload=vnet_hdr)
        except TunError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise DropInError(f"cannot create {name}: permission denied (a TUN device needs root "
                                  "or CAP_NET_ADMIN)") from None
            raise DropInError(f"cannot create {name}: {exc.strerror or exc}") from None
        made.append(tun)
        try:
            linkwatch.set_mtu(tun.name, DEFAULT_MTU)
        except OSError as exc:
            raise DropInError(f"cannot set the MTU of {name}: {exc.strerror or exc}") from None
        try:
            udp = UdpEndpoint(0, buffer_size=UDP_BUFFER)
        except OSError as exc:
            raise DropInError(f"cannot open a UDP socket: {exc.strerror or exc}") from None
        made.append(udp)
        device = Device(None, wall_epoch=time.time() - time.monotonic(), mtu=DEFAULT_MTU)
        plane = DataPlane(device, tun, udp, on_event=log_event)
        made.append(plane)
        # Key, port and fwmark change live: the Device takes the key, the sockets move.
        context = uapi.Context(device=device, private_key=None, listen_port=udp.port, fwmark=0,
                               now=plane.clock, perform=plane.perform, stats=plane.stats, name=name,
                               live=uapi.Live(rebind=plane.rebind, set_fwmark=udp.set_fwmark))
        try:
            server = control.ControlServer(name, lambda text: uapi.handle(text, context), socket_dir)
        except control.ControlError as exc:
            raise DropInError(str(exc)) from None
        made.append(server)

        def follow_mtu(mtu: int) -> None:  # `ip link set mtu`, wherever the link is
            if mtu != device.mtu:
                log.info("%s: MTU %d", name, mtu)
            device.mtu = mtu

        watch = linkwatch.LinkWatch(tun.fd, follow_mtu)
        made.append(watch)
    except BaseException:
        for thing in reversed(made):
            try:
                thing.close()
            except OSError:
                pass
        raise
    plane.add_reader(server.fileno(), server.on_readable)
    plane.add_reader(watch.fileno(), watch.on_readable)
    plane.every(1.0, watch.tick)
    log.info("%s: created, UDP port %d, no key yet: configure it with wg and ip", name, udp.port)
    return DropIn(name, tun, udp, device, plane, server, watch, context)


def detach(keep_output: bool) -> None:
    """Become a daemon: the calling process exits 0 here once its grandchild runs on its own.

    Everything is made before this is called, in the calling process (as
    wireguard-go opens the TUN and the UAPI socket before it re-executes
    itself in the background), so that a failure is reported by the process
    its caller waits for. Double fork: the daemon is no session leader and
    cannot get a controlling terminal; stdin (and stdout/stderr unless
    KEEP_OUTPUT) go to /dev/null, so the caller's pipes see EOF when it
    returns.
    """
    for stream in (logging.root.handlers or []):
        try:
            stream.flush()
        except Exception:  # a handler that cannot flush: nothing to lose
            pass
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid > 0:  # the caller: wait until the daemon is on its own, then leave without any clean-up
        os.close(ready_w)
        os.waitpid(pid, 0)
        os.read(ready_r, 1)
        os._exit(0)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if not keep_output:
        os.dup2(null, 1)
        os.dup2(null, 2)
    os.close(null)
    os.write(ready_w, b"1")
    os.close(ready_w)
