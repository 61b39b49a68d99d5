"""Idle RTT through our tunnel, wireguard-go, and the least a Python data plane can do; prints, asserts nothing.

    sudo .venv/bin/python bench/idle_rtt.py [--runs 5] [--count 30] [--interval 0.2]

Two namespaces joined by a veth; in each, one of:

- tunnel-wg: our data plane (`tunnel-wg IFACE`, configured with `wg set`);
- wireguard-go: Debian's, configured the same way;
- python-floor: the least a Python data plane does per packet, written here
  for this measurement only: one epoll loop, a TUN read, one
  ChaCha20-Poly1305 seal (the same library call as ours) and one sendto; a
  recv, one open and one TUN write. No handshake, no replay window, no
  timers, no counters: not a VPN, the floor under one.

Each run brings each kind up in turn, pings once to warm the path, then
sends COUNT pings INTERVAL seconds apart (peerbench's idle test: 20 pings
0.2 s apart) and takes ping's average. The kinds take turns, RUNS times;
printed: each kind's median (min-max) over the runs, and the ratios of
medians. OpenVPN and tinc are measured by ../shared/peerbench (`--tests ping`).

What it shows: after 0.2 s idle every hop starts from cold caches. Python
pays that per bytecode it runs, so the floor is where a pure-Python hop
stands, whatever else it leaves out. Measurements hold /tmp/bench.lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = f"irtt{os.getpid() % 10000}"
OUTER = ("10.79.0.1", "10.79.0.2")
INNER = ("10.79.1.1", "10.79.1.2")
PORT = 51829

FLOOR = r'''
import os, select, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from tunnel.tun import Tun
name, inner, port, peer = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
tun = Tun(name, vnet_hdr=False, offload=False)
os.system(f"ip addr add {inner}/24 dev {name} && ip link set {name} mtu 1420 up")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", port))
sock.setblocking(False)
aead = ChaCha20Poly1305(bytes(range(32)))
ep = select.epoll()
ep.register(tun.fd, select.EPOLLIN)
ep.register(sock.fileno(), select.EPOLLIN)
buf = bytearray(65536)
counter = 0
dest = (peer, port)
print("ready", flush=True)
while True:
    for fd, _ in ep.poll():
        if fd == tun.fd:
            while True:
                try:
                    n = os.readv(tun.fd, (buf,))
                except BlockingIOError:
                    break
                counter += 1
                nonce = struct.pack("<4xQ", counter)
                sock.sendto(nonce[4:] + aead.encrypt(nonce, bytes(buf[:n]), None), dest)
        else:
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                os.write(tun.fd, aead.decrypt(b"\0\0\0\0" + data[:8], data[8:], None))
'''


def sh(*cmd: str, ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def kill_all(ns: str) -> None:
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    time.sleep(0.3)


class Pair:
    def __init__(self, workdir: str):
        self.ns = (f"{PREFIX}a", f"{PREFIX}b")
        self.workdir = workdir
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{PREFIX}va", "netns", self.ns[0], "type", "veth", "peer", "name",
           f"{PREFIX}vb", "netns", self.ns[1])
        for ns, link, addr in zip(self.ns, (f"{PREFIX}va", f"{PREFIX}vb"), OUTER):
            sh("ip", "addr", "add", f"{addr}/24", "dev", link, ns=ns)
            sh("ip", "link", "set", link, "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)

    def up(self, kind: str) -> None:
        ifs = (f"{PREFIX}ta", f"{PREFIX}tb")
        if kind == "python-floor":
            self.procs = []
            for i, ns in enumerate(self.ns):
                p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", FLOOR, ROOT, ifs[i],
                                      INNER[i], str(PORT), OUTER[1 - i]], stdout=subprocess.PIPE, text=True)
                if p.stdout.readline().strip() != "ready":
                    raise SystemExit("the floor relay did not start")
                self.procs.append(p)
            time.sleep(0.3)
            return
        binary = shutil.which("wireguard-go") if kind == "wireguard-go" else \
            os.path.join(os.path.dirname(sys.executable), "tunnel-wg")
        if not binary or not os.access(binary, os.X_OK):
            raise SystemExit(f"{kind}: not installed")
        keys = []
        for i in range(2):
            key = sh("wg", "genkey").stdout.strip()
            path = os.path.join(self.workdir, f"{i}.key")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(key + "\n")
            keys.append((path, sh("wg", "pubkey", input=key + "\n").stdout.strip()))
        for i, ns in enumerate(self.ns):
            subprocess.run(["ip", "netns", "exec", ns, binary, ifs[i]], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        for i, ns in enumerate(self.ns):
            sh("wg", "set", ifs[i], "private-key", keys[i][0], "listen-port", str(PORT), "peer", keys[1 - i][1],
               "allowed-ips", f"{INNER[1 - i]}/32", "endpoint", f"{OUTER[1 - i]}:{PORT}", ns=ns)
            sh("ip", "addr", "add", f"{INNER[i]}/24", "dev", ifs[i], ns=ns)
            sh("ip", "link", "set", ifs[i], "mtu", "1420", "up", ns=ns)

    def rtt(self, count: int, interval: float) -> float:
        sh("ping", "-c", "3", "-i", "0.2", "-W", "2", INNER[1], ns=self.ns[0], check=False)  # handshake, warm path
        out = sh("ping", "-n", "-q", "-c", str(count), "-i", str(interval), INNER[1], ns=self.ns[0],
                 check=False).stdout
        m = re.search(r"= [\d.]+/([\d.]+)/", out)
        if not m or f" {count} received" not in out:
            raise SystemExit(f"ping through the tunnel failed: {out.strip()[-200:]}")
        return float(m.group(1))

    def down(self) -> None:
        for ns in self.ns:
            kill_all(ns)
        for p in getattr(self, "procs", []):
            p.wait(5)
        self.procs = []

    def close(self) -> None:
        self.down()
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--kinds", default="tunnel-wg,wireguard-go,python-floor")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/idle_rtt.py needs root (network namespaces)", file=sys.stderr)
        return 1
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    results: dict[str, list[float]] = {k: [] for k in kinds}
    with open("/tmp/bench.lock", "w") as lock, tempfile.TemporaryDirectory() as workdir:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pair = Pair(workdir)
        try:
            for run in range(args.runs):
                for kind in kinds:
                    pair.up(kind)
                    try:
                        results[kind].append(pair.rtt(args.count, args.interval))
                    finally:
                        pair.down()
                    print(f"run {run + 1} {kind}: {results[kind][-1]:.3f} ms", flush=True)
        finally:
            pair.close()
    print(f"\nidle RTT, {args.count} pings {args.interval} s apart, median (min-max) of {args.runs} runs taken in turns")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"{k:14} {med[k]:.3f} ms ({min(v):.3f}-{max(v):.3f})")
    if "tunnel-wg" in med:
        print("tunnel-wg / other, ratio of medians: " +
              ", ".join(f"{k} {med['tunnel-wg'] / med[k]:.2f}x" for k in med if k != "tunnel-wg"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
