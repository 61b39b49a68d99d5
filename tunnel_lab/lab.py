"""A tiny two-namespace lab for `tunnel demo` and `tunnel bench` (tunnel_lab: outside the library).

    +------------- NS-srv -------------+        +------------- NS-cli -------------+
    | tunnel up (tunNNNs)              |        | tunnel up (tunNNNc)              |
    | 10.77.0.1/24  fd77::1/64         |        | 10.77.0.2/24  fd77::2/64         |
    | veth 10.76.0.1/24 fd76::1/64 ----+--------+---- veth 10.76.0.2/24 fd76::2/64 |
    +----------------------------------+        +----------------------------------+

Rules kept here:
- it only ever creates its own namespaces (named with a prefix and our pid)
  and the veth pair inside them; it never touches the host's interfaces,
  routes or files, and all traffic stays between the two namespaces;
- everything is removed on exit, on error and on Ctrl-C (processes it
  started first, then the namespaces, which take their links with them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tunnel.keys import generate_private_key, public_key_of
from tunnel.secrets import write_private_file

SERVER_UNDERLAY = "10.76.0.1"
CLIENT_UNDERLAY = "10.76.0.2"
SERVER_INNER = "10.77.0.1"
CLIENT_INNER = "10.77.0.2"
SERVER_INNER6 = "fd77::1"
CLIENT_INNER6 = "fd77::2"
PORT = 51820


class LabError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Lab:
    def __init__(self, prefix: str = "tdemo"):
        tag = f"{prefix}{os.getpid() % 100000}"
        self.server = f"{tag}-srv"
        self.client = f"{tag}-cli"
        self.veth_s = f"v{os.getpid() % 100000}s"
        self.veth_c = f"v{os.getpid() % 100000}c"
        # Tunnel interface names: distinct per side and per run, because the
        # WireGuard control sockets in /var/run/wireguard are shared by all namespaces.
        self.ifname_s = f"tun{os.getpid() % 100000}s"
        self.ifname_c = f"tun{os.getpid() % 100000}c"
        self.workdir = tempfile.mkdtemp(prefix="tunnel-lab-")
        os.chmod(self.workdir, 0o700)
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []

    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        if shutil.which("ip") is None:
            raise LabError("the `ip` command (iproute2) is missing: apt-get install iproute2")
        for ns in (self.server, self.client):
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.server, "link", "add", self.veth_s, "type", "veth", "peer", "name", self.veth_c,
            "netns", self.client)
        for ns, dev, a4, a6 in ((self.server, self.veth_s, SERVER_UNDERLAY, "fd76::1"),
                                (self.client, self.veth_c, CLIENT_UNDERLAY, "fd76::2")):
            _ip("-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            _ip("-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")

    def write_configs(self, server_port: int = PORT) -> tuple[str, str]:
        """Fresh keys and a wg-quick config for each side, mode 0600; returns their paths."""
        sk, ck = generate_private_key(), generate_private_key()
        spub, cpub = public_key_of(sk), public_key_of(ck)
        server = (
            "[Interface]\n"
            f"PrivateKey = {sk}\nListenPort = {server_port}\n"
            f"Address = {SERVER_INNER}/24, {SERVER_INNER6}/64\n\n"
            "[Peer]\n# Name = demo-client\n"
            f"PublicKey = {cpub}\nAllowedIPs = {CLIENT_INNER}/32, {CLIENT_INNER6}/128\n"
        )
        client = (
            "[Interface]\n"
            f"PrivateKey = {ck}\n"
            f"Address = {CLIENT_INNER}/24, {CLIENT_INNER6}/64\n\n"
            "[Peer]\n# Name = demo-server\n"
            f"PublicKey = {spub}\nAllowedIPs = {SERVER_INNER}/32, {SERVER_INNER6}/128\n"
            f"Endpoint = {SERVER_UNDERLAY}:{server_port}\nPersistentKeepalive = 25\n"
        )
        sdir = os.path.join(self.workdir, "server")
        cdir = os.path.join(self.workdir, "client")
        os.makedirs(sdir, mode=0o700, exist_ok=True)
        os.makedirs(cdir, mode=0o700, exist_ok=True)
        spath, cpath = os.path.join(sdir, f"{self.ifname_s}.conf"), os.path.join(cdir, f"{self.ifname_c}.conf")
        write_private_file(spath, server)
        write_private_file(cpath, client)
        return spath, cpath

    def popen(self, ns: str, args: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, ns: str, args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                              timeout=timeout, **kw)

    def tunnel_up(self, ns: str, config: str, extra: list[str] | None = None, log_path: str | None = None,
                  env: dict | None = None) -> subprocess.Popen:
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        env = dict(os.environ, TUNNEL_STATE_DIR=os.path.join(self.workdir, f"state-{ns}"), **(env or {}))
        return self.popen(ns, [sys.executable, "-m", "tunnel", "up", config, *(extra or [])],
                          stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_link(self, ns: str, ifname: str, timeout: float = 15) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.run(ns, ["ip", "-o", "addr", "show", "dev", ifname])
            if r.returncode == 0 and "inet " in r.stdout:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.procs.clear()
        for ns in self.namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
