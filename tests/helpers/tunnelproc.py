"""Our daemon (`tunnel up`) as a process inside a test namespace, and traffic checks through it.

    tp = start_tunnel(ns, workdir, interface_config(key, port, ["10.9.0.1/24"], [peer]))
    tp.wait_up()
    ...
    assert tp.stop() == 0      # SIGTERM, then its exit status

Rules kept here:
- every config file is written 0600 in a private per-test directory the test
  owns (pytest's tmp_path), and TUNNEL_STATE_DIR points inside it, so no run
  ever touches /run/tunnel or another run's journal;
- interface names are unique on the machine (Topology.unique_ifname): the
  daemon's control socket is /var/run/wireguard/IFNAME.sock, shared by all
  namespaces; readiness is the daemon's own sd_notify READY=1, sent to a
  socket the helper binds;
- the daemon is started through Netns.popen, so the namespace teardown kills
  it whatever happens to the test; its output goes to a file that `log()`
  reads (a pipe nobody reads could fill and stall it);
- transfers hash what was really sent and what was really received on the
  two sides of the tunnel: SHA-256 of the sender's stream == the receiver's;
- waits are generous bounds against hangs, never assertions about speed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

from tests.helpers.netns import WG_SOCKET_DIR, Netns, WgPeer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def interface_config(private_key: str, listen_port: int | None, addresses: Sequence[str],
                     peers: Sequence[WgPeer], extra: str = "") -> str:
    """A wg-quick config; peers reuse the harness's WgPeer (key, allowed_ips, endpoint, keepalive, psk)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    if addresses:
        lines.append(f"Address = {', '.join(addresses)}")
    if extra:
        lines.append(extra.rstrip("\n"))
    for p in peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}"]
        if p.preshared_key:
            lines.append(f"PresharedKey = {p.preshared_key}")
        if p.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(p.allowed_ips)}")
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def write_config(directory: str, ifname: str, text: str, mode: int = 0o600) -> str:
    """Write DIRECTORY/IFNAME.conf with `mode` (0600 unless a test wants it wrong)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{ifname}.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(path, mode)
    return path


def tunnel_env(state_dir: str) -> dict[str, str]:
    env = dict(os.environ, TUNNEL_STATE_DIR=state_dir)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_tunnel(ns: Netns, state_dir: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`tunnel ARGS` to completion in `ns` (e.g. "down", "ti0"), output captured."""
    return ns.run([sys.executable, "-m", "tunnel", *args], check=False, timeout=timeout,
                  env=tunnel_env(state_dir))


@dataclass
class TunnelProc:
    """One `tunnel up` running in namespace `ns`."""

    ns: Netns
    ifname: str
    config_path: str
    state_dir: str
    proc: subprocess.Popen[bytes]
    log_path: str
    notify: socket.socket  # our end of its NOTIFY_SOCKET
    ready: bool = False

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, f"{self.ifname}.json")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_up(self, timeout: float = 20.0) -> None:
        """Until the daemon reports READY=1 (sd_notify): link, routes and control socket exist by then."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tunnel up {self.ifname} exited {self.proc.returncode}:\n{self.log()}")
            try:
                return b"READY=1" in self.notify.recv(4096)
            except BlockingIOError:
                return False

        if not self.ready:  # READY=1 comes once
            Netns.wait_for(ready, timeout, what=f"{self.ifname} READY=1")
            self.ready = True

    def control_socket_exists(self) -> bool:
        return os.path.exists(os.path.join(WG_SOCKET_DIR, f"{self.ifname}.sock"))

    def send_signal(self, sig: int) -> None:
        # The process group: `ip netns exec` execs into python, but be sure.
        os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig`, wait for the exit and return the status (raises on a hang)."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tunnel up {self.ifname} ignored signal {sig} for {timeout}s:\n{self.log()}")
        finally:
            self.notify.close()

    def tun_exists(self) -> bool:
        return self.ns.run(["ip", "link", "show", "dev", self.ifname], check=False).returncode == 0


def start_tunnel(ns: Netns, workdir: str, config_text: str, args: Sequence[str] = (),
                 config_mode: int = 0o600, ifname: str | None = None) -> TunnelProc:
    """Write WORKDIR/<ns>/IFNAME.conf and start `tunnel up` on it in `ns` with ARGS (e.g. "--no-offload").

    The interface name is unique on the machine unless given: the daemon's
    control socket, like wireguard-go's, lives in the /var/run/wireguard
    that all namespaces share (the harness removes one a SIGKILL leaves).
    """
    ifname = ifname or ns.topo.unique_ifname("ti")
    base = os.path.join(workdir, ns.short)
    path = write_config(base, ifname, config_text, config_mode)
    state_dir = os.path.join(base, "state")
    log_path = os.path.join(base, f"{ifname}.log")
    # READY=1 arrives here; a path (an abstract name would stay in our namespace).
    notify_path = os.path.join(base, f"{ifname}.notify")
    if os.path.exists(notify_path):  # an earlier run of the same interface (a restart)
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    notify.bind(notify_path)
    env = tunnel_env(state_dir)
    env["NOTIFY_SOCKET"] = notify_path
    logf = open(log_path, "wb")
    try:
        proc = ns.popen([sys.executable, "-m", "tunnel", "up", path, *args],
                        stdout=logf, stderr=subprocess.STDOUT, env=env)
    except BaseException:
        notify.close()
        raise
    finally:
        logf.close()  # the child has its own copy
    return TunnelProc(ns, ifname, path, state_dir, proc, log_path, notify)


# -- traffic -----------------------------------------------------------------


def wait_ping(ns: Netns, target: str, timeout: float = 20.0) -> None:
    """Ping until one reply (the first packet may wait for a handshake)."""

    def once() -> bool:
        return ns.run(["ping", "-c", "1", "-W", "1", target], check=False).returncode == 0

    Netns.wait_for(once, timeout, interval=0.1, what=f"a ping reply from {target} in {ns.name}")


def ping(ns: Netns, target: str, count: int = 3) -> None:
    """`count` pings, every one answered."""
    res = ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", target], check=False)
    assert res.returncode == 0, f"ping {target} from {ns.name}:\n{res.stdout}{res.stderr}"
    assert f"{count} received" in res.stdout, res.stdout


# A receiver and a sender in plain Python: iperf3 cannot tell us a hash.
# Both print "<bytes> <sha256>" when done; the sender also stops early when
# STOP_FILE (argv) appears, so a test can run traffic for "as long as needed".
_RECEIVER = r"""
import hashlib, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
h, total = hashlib.sha256(), 0
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    h.update(view[:n])
    total += n
print(total, h.hexdigest(), flush=True)
"""

_SENDER = r"""
import hashlib, os, socket, sys, time
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate, stop_file = float(sys.argv[4]), sys.argv[5]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.create_connection((host, port), timeout=30)
s.settimeout(120)
h, sent = hashlib.sha256(), 0
chunk = 1 << 20 if rate <= 0 else 1 << 16
start = time.monotonic()
while sent < total:
    if stop_file != "-" and os.path.exists(stop_file):
        break
    block = os.urandom(min(chunk, total - sent))
    s.sendall(block)
    h.update(block)
    sent += len(block)
    if rate > 0:  # paced: keep a slow stream going across timers
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
s.settimeout(120)
while s.recv(65536):
    pass
s.close()
print(sent, h.hexdigest(), flush=True)
"""


def _python_argv(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


@dataclass
class TransferResult:
    sent_bytes: int
    sent_hash: str
    received_bytes: int
    received_hash: str
    seconds: float

    def assert_intact(self, at_least: int = 0) -> None:
        assert self.received_bytes == self.sent_bytes, self
        assert self.received_hash == self.sent_hash, self
        assert self.sent_bytes >= at_least, self


class Transfer:
    """A TCP stream from `sender_ns` to `receiver_ns`'s address `host`, started by `start()`."""

    def __init__(self, sender_ns: Netns, receiver_ns: Netns, host: str, port: int, total: int,
                 rate: float = 0.0, stop_file: str = "-", workdir: str | None = None):
        self.sender_ns, self.receiver_ns = sender_ns, receiver_ns
        self.host, self.port, self.total, self.rate, self.stop_file = host, port, total, rate, stop_file
        self.workdir = workdir
        self.receiver: subprocess.Popen[str] | None = None
        self.sender: subprocess.Popen[str] | None = None
        self.started = 0.0

    def start(self) -> "Transfer":
        self.receiver = self.receiver_ns.popen(_python_argv(_RECEIVER, self.host, str(self.port)),
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.receiver.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "listening", f"receiver: {line}{self.receiver.stderr.read()}"  # type: ignore[union-attr]
        self.started = time.monotonic()
        self.sender = self.sender_ns.popen(
            _python_argv(_SENDER, self.host, str(self.port), str(self.total), str(self.rate), self.stop_file),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def wait(self, timeout: float = 180.0) -> TransferResult:
        assert self.sender is not None and self.receiver is not None
        try:
            s_out, s_err = self.sender.communicate(timeout=timeout)
            r_out, r_err = self.receiver.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.sender.kill()
            self.receiver.kill()
            raise AssertionError(f"transfer to {self.host} did not finish within {timeout}s")
        seconds = time.monotonic() - self.started
        assert self.sender.returncode == 0, f"sender exited {self.sender.returncode}: {s_err}"
        assert self.receiver.returncode == 0, f"receiver exited {self.receiver.returncode}: {r_err}"
        sent_n, sent_h = s_out.split()
        recv_n, recv_h = r_out.split()
        return TransferResult(int(sent_n), sent_h, int(recv_n), recv_h, seconds)


def transfer(sender_ns: Netns, receiver_ns: Netns, host: str, port: int, total: int,
             timeout: float = 180.0) -> TransferResult:
    """Send `total` random bytes over TCP as fast as it goes; both sides' SHA-256 returned."""
    return Transfer(sender_ns, receiver_ns, host, port, total).start().wait(timeout)


# A download that survives its connection: the site serves a fixed pseudo-random
# file from any offset the client asks for ("OFFSET\n"), paced; the client
# reconnects from where it got to whenever a connection stalls for a second
# or breaks (an application-level retry, as a browser's resumed download),
# and prints "<bytes> <sha256> <connections>" at the end.
_RESUMABLE_SERVER = r"""
import random, socket, sys, threading, time
host, port, size, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = random.Random(int(sys.argv[5])).randbytes(size)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(16)
print("listening", flush=True)
def serve(conn):
    try:
        conn.settimeout(30)
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                return
            line += chunk
        off = int(line)
        start, sent = time.monotonic(), 0
        while off < size:
            n = conn.send(data[off:off + 16384])
            off += n
            sent += n
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    except OSError:
        pass
    finally:
        conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

_RESUMABLE_CLIENT = r"""
import hashlib, socket, sys, time
host, port, size, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
got, connections = bytearray(), 0
deadline = time.monotonic() + limit
while len(got) < size and time.monotonic() < deadline:
    connections += 1
    s = None
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.settimeout(1.0)
        s.sendall(b"%d\n" % len(got))
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        time.sleep(0.2)
    finally:
        if s is not None:
            s.close()
print(len(got), hashlib.sha256(got).hexdigest(), connections, flush=True)
"""


class ResumableDownload:
    """SIZE pseudo-random bytes (SEED) from a server in `server_ns` at host:port, fetched from `client_ns`
    with reconnects; `wait()` gives (bytes, matches, connections)."""

    def __init__(self, server_ns: Netns, client_ns: Netns, host: str, port: int, size: int,
                 rate: float, seed: int = 7, limit: float = 150.0):
        self.server_ns, self.client_ns = server_ns, client_ns
        self.host, self.port, self.size, self.rate, self.seed, self.limit = host, port, size, rate, seed, limit
        self.server: subprocess.Popen[str] | None = None
        self.client: subprocess.Popen[str] | None = None

    def start(self) -> "ResumableDownload":
        self.server = self.server_ns.popen(
            _python_argv(_RESUMABLE_SERVER, self.host, str(self.port), str(self.size), str(self.rate),
                         str(self.seed)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.server.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "listening", f"server: {line}{self.server.stderr.read()}"  # type: ignore[union-attr]
        self.client = self.client_ns.popen(
            _python_argv(_RESUMABLE_CLIENT, self.host, str(self.port), str(self.size), str(self.limit)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def expected_sha256(self) -> str:
        return hashlib.sha256(random.Random(self.seed).randbytes(self.size)).hexdigest()

    def wait(self) -> tuple[int, bool, int]:
        assert self.client is not None and self.server is not None
        try:
            out, err = self.client.communicate(timeout=self.limit + 30)
        finally:
            self.server.kill()
            self.server.wait(10)
        assert self.client.returncode == 0, f"download exited {self.client.returncode}: {err}"
        n, digest, connections = out.split()
        return int(n), digest == self.expected_sha256(), int(connections)
