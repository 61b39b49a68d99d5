"""The control socket /var/run/wireguard/IFACE.sock, served inside the data-plane loop.

`wg show`, `wg set`, `wg setconf`, `wg syncconf`, `tunnel show` and
`tunnel server add-client` all talk to it (protocol: tunnel/uapi.py). It serves
every interface, client or server, as wireguard-go's device/uapi.go does.

Rules kept here:
- never blocks the loop: the listening socket and every connection are
  non-blocking and watched by one epoll of our own, whose fd is the single
  fd the data plane watches for us (DataPlane.add_reader); a slow or stuck
  client costs one buffer, never a wait;
- bounded: at most MAX_CONNECTIONS at once (the oldest is dropped for a new
  one), a request larger than MAX_REQUEST closes its connection (32 MB: the
  kernel selftest's `wg setconf` of 130,560 allowed IPs is 3.5 MB), a
  connection idle for IDLE_SECONDS is closed on the next activity;
- root only: the socket is created under umask 077 and chmod 0600 before
  listen(), in a directory that is 0755 root (as wireguard-go's);
- a socket file left by a crashed run (nobody accepts on it) is replaced;
  one that answers belongs to a live daemon and makes start-up fail.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from typing import Callable

from .uapi import Context, handle
from .undo import undoer

log = logging.getLogger("tunnel")

SOCKET_DIR = "/var/run/wireguard"
MAX_CONNECTIONS = 32
MAX_REQUEST = 32 << 20
IDLE_SECONDS = 30.0
READ_CHUNK = 65536


class ControlError(RuntimeError):
    """The control socket could not be set up or reached; the message says why."""


def socket_path(ifname: str, socket_dir: str = SOCKET_DIR) -> str:
    return os.path.join(socket_dir, f"{ifname}.sock")


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "last", "closing", "scanned")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = now
        self.closing = False
        self.scanned = 0  # inbuf[:scanned] holds no request end: a big request is searched once


class ControlServer:
    """Answers requests on the control socket; `handler(request_text) -> answer_text`."""

    def __init__(self, ifname: str, handler: Callable[[str], str], socket_dir: str = SOCKET_DIR,
                 clock: Callable[[], float] = time.monotonic):
        self.handler = handler
        self.clock = clock
        self.path = socket_path(ifname, socket_dir)
        try:
            os.makedirs(socket_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {socket_dir}: {exc.strerror or exc}") from None
        _claim(self.path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            self.listener.bind(self.path)
        except OSError as exc:
            self.listener.close()
            raise ControlError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._ino = os.stat(self.path).st_ino
        self.listener.listen(16)
        self.ep = select.epoll()
        self.ep.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, _Conn] = {}

    def fileno(self) -> int:
        return self.ep.fileno()

    # -- the loop's callback ---------------------------------------------------

    def on_readable(self) -> None:
        now = self.clock()
        for fd, events in self.ep.poll(0):
            if fd == self.listener.fileno():
                self._accept(now)
                continue
            conn = self.conns.get(fd)
            if conn is None:
                continue
            conn.last = now
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._read(conn)
            if fd in self.conns and events & select.EPOLLOUT:
                self._flush(conn)
        for conn in [c for c in self.conns.values() if now - c.last > IDLE_SECONDS]:
            self._close(conn)

    def _accept(self, now: float) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next event
                log.warning("control socket: accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self.conns) >= MAX_CONNECTIONS:
                self._close(min(self.conns.values(), key=lambda c: c.last))
            conn = _Conn(sock, now)
            self.conns[sock.fileno()] = conn
            self.ep.register(sock.fileno(), select.EPOLLIN)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            # The peer closed its side: answer what is complete, then close.
            conn.closing = True
            self._flush(conn)
            return
        conn.inbuf += data
        while True:
            end = conn.inbuf.find(b"\n\n", max(0, conn.scanned - 1))
            if end < 0:
                conn.scanned = len(conn.inbuf)
                break
            request = bytes(conn.inbuf[:end])
            del conn.inbuf[:end + 2]
            conn.scanned = 0
            try:
                answer = self.handler(request.decode("utf-8", "replace"))
            except Exception:  # our bug: keep the loop alive, tell the client
                log.exception("control socket: request failed")
                answer = f"errno=-{errno.EIO}\n\n"
            conn.outbuf += answer.encode()
        if len(conn.inbuf) > MAX_REQUEST:
            self._close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del conn.outbuf[:n]
        if not conn.outbuf and conn.closing:
            self._close(conn)
            return
        mask = select.EPOLLIN | (select.EPOLLOUT if conn.outbuf else 0)
        if conn.closing:
            mask &= ~select.EPOLLIN
        try:
            self.ep.modify(conn.sock.fileno(), mask)
        except OSError:
            pass

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        try:
            # Only remove the file if it is still ours (a new daemon may own it).
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener.close()
        self.ep.close()


@undoer("control_socket")
def _remove_dead_socket(path: str) -> None:
    """Undo: remove the socket file unless a live daemon (ours in another namespace) still answers."""
    try:
        _claim(path)
    except ControlError:
        pass


def _claim(path: str) -> None:
    """Remove a stale socket file; refuse if a live daemon answers on it."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        raise ControlError(f"{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ControlError(f"{path} is in use: is this interface already running?")


# --- the client side ----------------------------------------------------------------


def request(ifname: str, text: str, socket_dir: str = SOCKET_DIR, timeout: float = 10.0) -> str:
    """Send one request (without its final empty line) and return the answer text.

    Raises ControlError if nothing is listening (the interface is not running).
    """
    path = socket_path(ifname, socket_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"{ifname} is not running (no daemon on {path})") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (root only)") from None
        sock.sendall(text.rstrip("\n").encode() + b"\n\n")
        data = bytearray()
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(READ_CHUNK)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise ControlError(f"{ifname}: no answer on {path}") from None
    finally:
        sock.close()
    return data.decode("utf-8", "replace")


def answer_errno(answer: str) -> int:
    """The errno of an answer as a positive number (0: success); EPROTO if it has none."""
    for line in reversed(answer.strip().split("\n")):
        if line.startswith("errno="):
            try:
                return abs(int(line[6:]))
            except ValueError:
                break
    return errno.EPROTO


def parse_get(answer: str) -> tuple[dict[str, str], list[dict[str, object]]]:
    """A get=1 answer as (interface keys, peers); each peer has 'allowed_ips' as a list."""
    iface: dict[str, str] = {}
    peers: list[dict[str, object]] = []
    current: dict[str, object] | None = None
    for line in answer.split("\n"):
        key, sep, value = line.partition("=")
        if not sep or key == "errno":
            continue
        if key == "public_key":
            current = {"public_key": value, "allowed_ips": []}
            peers.append(current)
        elif current is None:
            iface[key] = value
        elif key == "allowed_ip":
            current["allowed_ips"].append(value)  # type: ignore[union-attr]
        else:
            current[key] = value
    return iface, peers


# --- wiring into a running Interface ------------------------------------------------


def provided_status(interface) -> dict:
    """What the roles' services report for `tunnel show` (a provider that fails reports its error)."""
    out = {}
    for name, provider in list(getattr(interface, "status_providers", {}).items()):
        try:
            out[name] = provider()
        except Exception as exc:  # noqa: BLE001 - a status line must not break the socket
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def attach(interface, socket_dir: str = SOCKET_DIR) -> ControlServer:
    """Serve the control socket of a brought-up Interface from its data-plane loop."""
    plane = interface.plane
    ctx = Context(
        device=interface.device,
        private_key=interface.config.interface.private_key,
        listen_port=interface.udp.port,
        fwmark=interface.fwmark or 0,
        now=plane.clock,
        perform=plane.perform,
        stats=plane.stats,
        name=interface.name,
        extra=lambda: provided_status(interface),
    )
    # Journalled so that `tunnel down` after a crash removes the dead socket file.
    interface.journal.record("control_socket", path=socket_path(interface.name, socket_dir))
    server = ControlServer(interface.name, lambda text: handle(text, ctx), socket_dir)
    plane.add_reader(server.fileno(), server.on_readable)
    return server
