"""`tunnel demo`: the main job, a team server and one client, our code on both ends.

In a namespace of its own, `tunnel server init` creates a server whose state
lives in its embedded SQLite registry, `tunnel server up` runs the daemon,
and `tunnel server add-client` provisions a laptop; the client's config goes
to a second namespace, where `tunnel up` connects it. The demo then shows the
handshake, a ping over IPv4 and IPv6 inside the tunnel, a short TCP
throughput figure (iperf3 when installed) and the server's client list.
Everything it creates lives in its two namespaces and a private temporary
directory, removed at the end whatever happens (the server stops cleanly
first, undoing what it set up).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tunnel.secrets import write_private_file

from .lab import PORT, SERVER_UNDERLAY, Lab, LabError

POOL4, POOL6 = "10.77.0.0/24", "fd77::/64"
CLIENT_NAME = "laptop"


def run_demo(seconds: int = 3, echo=print) -> str | None:
    if os.geteuid() != 0:
        return "the demo creates network namespaces: run it as root (sudo)"
    try:
        with Lab("tdemo") as lab:
            return _demo(lab, seconds, echo)
    except LabError as exc:
        return str(exc)
    except subprocess.TimeoutExpired as exc:
        return f"timed out: {' '.join(exc.cmd[3:]) if isinstance(exc.cmd, list) else exc.cmd}"


def _demo(lab: Lab, seconds: int, echo) -> str | None:
    echo(f"[1/7] namespaces {lab.server} and {lab.client}, joined by a veth pair")
    server = _Server(lab)
    res = server.cli("init", "--endpoint", SERVER_UNDERLAY, "--port", str(PORT), "--pool", POOL4,
                     "--pool", POOL6, "--split", "--no-nat")
    if res.returncode != 0:
        return "tunnel server init failed:\n" + res.stdout + res.stderr
    echo(f"[2/7] tunnel server init: keys and settings in the embedded registry {server.registry}")
    failure = server.up()
    if failure:
        return failure
    echo(f"[3/7] tunnel server up: the daemon runs in {lab.server} (TUN {lab.ifname_s}, UDP {PORT})")
    res = server.cli("add-client", CLIENT_NAME, "--no-qr")
    if res.returncode != 0:
        return "tunnel server add-client failed:\n" + res.stdout + res.stderr
    config = res.stdout
    addresses = _addresses(config)
    if not addresses:
        return "add-client printed no client config:\n" + res.stdout + res.stderr
    cpath = os.path.join(lab.workdir, "client", f"{lab.ifname_c}.conf")
    os.makedirs(os.path.dirname(cpath), mode=0o700, exist_ok=True)
    write_private_file(cpath, config)
    echo(f"[4/7] tunnel server add-client {CLIENT_NAME}: {', '.join(addresses)}, its config in {cpath} (0600)")
    clog = os.path.join(lab.workdir, "client.log")
    lab.tunnel_up(lab.client, cpath, log_path=clog)
    if not lab.wait_link(lab.client, lab.ifname_c):
        return "the client did not come up:\n" + _tail(clog)
    server4, server6 = _server_addresses(lab, lab.ifname_s)
    t0 = time.monotonic()
    if not _wait_ping(lab, server4, 10):
        return "no handshake within 10 s:\n" + _tail(clog) + _tail(server.log_path)
    echo(f"[5/7] tunnel up {cpath} in {lab.client}: handshake completed in "
         f"{1000 * (time.monotonic() - t0):.0f} ms")
    for target in (server4, server6):
        r = lab.run(lab.client, ["ping", "-c", "3", "-i", "0.2", "-w", "5", target])
        summary = [ln for ln in r.stdout.splitlines() if "rtt" in ln or "packets transmitted" in ln]
        echo(f"      ping {target} through the tunnel: " + (" | ".join(summary) or r.stderr.strip()))
        if r.returncode != 0:
            return f"ping {target} failed"
    echo(f"[6/7] {seconds} s of TCP from the client to the server through the tunnel...")
    mbps = _throughput(lab, server4, addresses[0].split("/")[0], seconds)
    echo(f"      {mbps:.0f} Mbit/s" if mbps else "      (no figure: iperf3 is not installed or did not run)")
    res = server.cli("list")
    echo("[7/7] tunnel server list (from the registry):")
    for line in (res.stdout or res.stderr).rstrip().splitlines():
        echo("      " + line)
    failure = server.stop()
    if failure:
        return failure
    echo("demo finished: the server stopped cleanly; removing namespaces, keys and configs")
    return None


class _Server:
    """`tunnel server` commands in the lab's server namespace, with the state under its work dir."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.dir = os.path.join(lab.workdir, "server")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.registry = os.path.join(self.dir, f"{lab.ifname_s}.db")
        self.log_path = os.path.join(lab.workdir, "server.log")
        self.env = dict(os.environ, TUNNEL_STATE_DIR=os.path.join(lab.workdir, f"state-{lab.server}"))
        self.proc: subprocess.Popen | None = None

    def _args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tunnel", "server", *args, "--dir", self.dir, "-i", self.lab.ifname_s]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.lab.server, self._args(*args), env=self.env)

    def up(self, timeout: float = 20) -> str | None:
        with open(self.log_path, "wb") as log:
            self.proc = self.lab.popen(self.lab.server, self._args("up"), stdout=log,
                                       stderr=subprocess.STDOUT, env=self.env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return f"tunnel server up exited ({self.proc.returncode}):\n" + _tail(self.log_path)
            if self.lab.wait_link(self.lab.server, self.lab.ifname_s, timeout=0.2) and \
                    self.cli("show").returncode == 0:
                return None
        return "the server did not come up:\n" + _tail(self.log_path)

    def stop(self) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            return "the server did not stop within 20 s"
        return None if code == 0 else f"the server exited {code}:\n" + _tail(self.log_path)


def _addresses(config: str) -> list[str]:
    """The Address values of a wg-quick config's [Interface]."""
    out: list[str] = []
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "address":
            out += [a.strip() for a in value.split(",") if a.strip()]
    return out


def _server_addresses(lab: Lab, ifname: str) -> tuple[str, str]:
    """The server interface's IPv4 and IPv6 addresses (the first address of each pool)."""
    r = lab.run(lab.server, ["ip", "-j", "addr", "show", "dev", ifname])
    v4 = v6 = ""
    for info in json.loads(r.stdout or "[]")[0].get("addr_info", []) if r.returncode == 0 else []:
        if info.get("family") == "inet" and not v4:
            v4 = info["local"]
        elif info.get("family") == "inet6" and info.get("scope") == "global" and not v6:
            v6 = info["local"]
    if not v4 or not v6:
        raise LabError(f"the server's {ifname} has no IPv4 or no IPv6 address: {r.stdout}{r.stderr}")
    return v4, v6


def _wait_ping(lab: Lab, target: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lab.run(lab.client, ["ping", "-c", "1", "-W", "1", target]).returncode == 0:
            return True
    return False


def _throughput(lab: Lab, server: str, client: str, seconds: int) -> float | None:
    """Mbit/s received by an iperf3 server in the server namespace, or None."""
    if shutil.which("iperf3") is None:
        return None
    lab.popen(lab.server, ["iperf3", "-s", "-1", "-B", server],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):  # until the server listens
        r = lab.run(lab.client, ["iperf3", "-c", server, "-B", client, "-t", str(seconds), "-J"],
                    timeout=seconds + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            data = {}
        received = data.get("end", {}).get("sum_received", {}).get("bits_per_second")
        if r.returncode == 0 and received is not None:
            return received / 1e6
        time.sleep(0.1)
    return None


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
