"""Garbage at line rate against an established session: ours beside wireguard-go, in one run.

    sudo .venv/bin/python bench/flood.py [--runs 3] [--seconds 5] [--rate 150000] [--kinds tunnel,wireguard-go]

    [cli] cli-srv 10.81.0.2 ---------- srv-cli 10.81.0.1 [srv] srv-atk 10.82.0.1 ---------- atk-srv 10.82.0.2 [atk]
          tunnel 10.83.0.2                                     tunnel 10.83.0.1 :51820                garbage sender

For each kind (the same implementation at both tunnel ends) and each run,
interleaved: a session is set up, real datagrams of it are captured on the
client's link (an on-path observer: the handshake initiation and response,
transport of several sizes), and a pool of garbage is made from them:

    25% random bytes, 0-1500 long;
    25% a valid type header (1-4, three zero bytes) with a random body, half
        of them at the exact size of their type;
    15% type 4 with the server's real receiver index (from the capture),
        a random counter and body, 32-1500 long: each reaches the AEAD;
    35% truncated or bit-flipped copies of the captured datagrams, or
        verbatim replays.

The attacker sends the pool round-robin with sendmmsg (ctypes, 256 a call)
at --rate datagrams a second. Three phases a run: a single TCP stream
through the tunnel (iperf3, client -> server) without garbage; the flood
with a ping through the tunnel every 5 ms; the flood with the TCP stream.
Printed per kind, as median (min-max) over the runs: ping loss under flood,
TCP under flood and without (and their ratio), the server's UDP receive
buffer drops (/proc/net/snmp RcvbufErrors in its namespace: only the tunnel
listens on UDP there), the garbage rate sent and the count that reached the
server's link, and the server's CPU seconds (its tunnel process, user +
system) per million garbage datagrams that reached it during the ping
phase. The kernel's softirq work for the flood (the server's side too: the
socket filter, queueing, drops) runs mostly on the sender's CPU time and is
not in that figure, for either kind; the sender's own CPU use is printed
(`atk CPU %`, of one core): on a 2-core machine it is the CPU the tunnel
and its TCP stream no longer have.

Measurements hold an exclusive flock on /tmp/bench.lock.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel, wait_ping  # noqa: E402
from tests.helpers.netns import WgPeer, genkey, topology, wireguard_go  # noqa: E402

PORT = 51820
SERVER_UNDER, CLIENT_UNDER = "10.81.0.1", "10.81.0.2"
SERVER_ATK, ATTACKER = "10.82.0.1", "10.82.0.2"
SERVER_IN, CLIENT_IN = "10.83.0.1", "10.83.0.2"
KINDS = ("tunnel", "wireguard-go")
POOL_SIZE = 40_000
PING_INTERVAL = 0.005
_CLK = os.sysconf("SC_CLK_TCK")
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800

# The attacker: the pool file (u16 length + bytes, repeated) sent round-robin with sendmmsg.
_SENDER = r"""
import ctypes, errno, os, socket, sys, time
path, host, port, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
data = open(path, "rb").read()
offs, lens, i = [], [], 0
while i < len(data):
    n = int.from_bytes(data[i:i + 2], "little")
    offs.append(i + 2); lens.append(n); i += 2 + n
buf = ctypes.create_string_buffer(data, len(data))
base = ctypes.addressof(buf)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
N = len(lens)
iovs = (iovec * N)()
msgs = (mmsghdr * N)()
isz, msz = ctypes.sizeof(iovec), ctypes.sizeof(mmsghdr)
iov0 = ctypes.addressof(iovs)
for k in range(N):
    iovs[k].base = base + offs[k]; iovs[k].len = lens[k]
    msgs[k].hdr.iov = iov0 + k * isz; msgs[k].hdr.iovlen = 1
libc = ctypes.CDLL(None, use_errno=True)
sendmmsg = libc.sendmmsg
sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.connect((host, port))
fd, m0 = s.fileno(), ctypes.addressof(msgs)
BATCH = 256
sent, k, errors = 0, 0, 0
start = time.monotonic()
end = start + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    if rate > 0:
        ahead = sent - (now - start) * rate
        if ahead > 0:
            time.sleep(ahead / rate)
            continue
    n = min(BATCH, N - k)
    r = sendmmsg(fd, m0 + k * msz, n, 0)
    if r < 0:
        errors += 1
        e = ctypes.get_errno()
        if e not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.EINTR):
            raise OSError(e, os.strerror(e))
        if e == errno.ECONNREFUSED:
            k = (k + 1) % N  # that datagram got an ICMP error back: it was delivered (sent) anyway
            sent += 1
        continue
    sent += r
    k = (k + r) % N
t = os.times()
print(sent, time.monotonic() - start, errors, t.user + t.system, flush=True)
"""


# -- the garbage -----------------------------------------------------------------


def capture_open(ns):
    """A packet socket on the client's link, opened before the tunnel starts (ETH_P_ALL: both directions)."""
    with ns.entered():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        s.bind(("cli-srv", ETH_P_ALL))
    s.setblocking(False)
    return s


def capture_read(sock) -> list[tuple[bool, bytes]]:
    """(to_server, payload) of every single WireGuard datagram seen (GSO trains are skipped)."""
    out = []
    while True:
        try:
            pkt, addr = sock.recvfrom(65536)
        except BlockingIOError:
            return out
        if addr[1] != ETH_P_IP or len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 17:
            continue
        ihl = (pkt[0] & 15) * 4
        sport, dport, ulen = struct.unpack_from(">HHH", pkt, ihl)
        payload = pkt[ihl + 8:]
        if PORT not in (sport, dport) or ulen != len(payload) + 8 or len(payload) > 1500:
            continue
        out.append((dport == PORT, bytes(payload)))


def garbage_pool(rnd: random.Random, captured: list[tuple[bool, bytes]], count: int) -> tuple[list[bytes], dict]:
    to_server = [d for up, d in captured if up]
    real = [d for _, d in captured]
    index = next((d[4:8] for d in to_server if d[0] == 4 and len(d) >= 32), None)
    kinds = {k: 0 for k in ("random", "typed", "receiver", "copies")}
    pool = []
    sizes = {1: 148, 2: 92, 3: 64}
    for _ in range(count):
        x = rnd.random()
        if x < 0.25:
            d = rnd.randbytes(rnd.randrange(0, 1501))
            kinds["random"] += 1
        elif x < 0.50:
            t = rnd.randint(1, 4)
            if rnd.random() < 0.5:
                n = sizes.get(t) or rnd.randrange(32, 1501)
            else:
                n = rnd.randrange(4, 1501)
            d = bytes([t, 0, 0, 0]) + rnd.randbytes(n - 4)
            kinds["typed"] += 1
        elif x < 0.65 and index is not None:
            d = b"\x04\0\0\0" + index + rnd.randbytes(rnd.randrange(32, 1501) - 8)
            kinds["receiver"] += 1
        else:
            b = bytearray(rnd.choice(real))
            op = rnd.random()
            if op < 0.4:
                del b[rnd.randrange(len(b)):]
            elif op < 0.9:
                for _ in range(rnd.randint(1, 4)):
                    i = rnd.randrange(len(b))
                    b[i] ^= 1 << rnd.randrange(8)
            d = bytes(b)  # else a verbatim replay
            kinds["copies"] += 1
        pool.append(d)
    return pool, {"kinds": kinds, "captured": len(real), "to_server": len(to_server),
                  "captured_types": sorted({d[0] for d in real}), "receiver_index": index is not None}


def write_pool(path: str, pool: list[bytes]) -> None:
    with open(path, "wb") as f:
        for d in pool:
            f.write(len(d).to_bytes(2, "little") + d)


# -- one measurement -----------------------------------------------------------------


class Setup:
    def __init__(self, topo, kind: str, workdir: str):
        self.kind = kind
        self.workdir = workdir
        self.cli, self.srv, self.atk = topo.netns("cli"), topo.netns("srv"), topo.netns("atk")
        self.cli.link_veth(self.srv, f"{CLIENT_UNDER}/24", f"{SERVER_UNDER}/24", name="cli-srv", other_name="srv-cli")
        self.srv.link_veth(self.atk, f"{SERVER_ATK}/24", f"{ATTACKER}/24", name="srv-atk", other_name="atk-srv")
        self.capture = capture_open(self.cli)
        self.server_tp = None
        ck, sk = genkey(), genkey()
        to_server = WgPeer(sk[1], [f"{SERVER_IN}/32"], endpoint=f"{SERVER_UNDER}:{PORT}")
        to_client = WgPeer(ck[1], [f"{CLIENT_IN}/32"])
        if kind == "tunnel":
            self.server_tp = start_tunnel(self.srv, workdir, interface_config(sk[0], PORT, [f"{SERVER_IN}/24"],
                                                                               [to_client]))
            self.server_tp.wait_up()
            tc = start_tunnel(self.cli, workdir, interface_config(ck[0], None, [f"{CLIENT_IN}/24"], [to_server]))
            tc.wait_up()
        else:
            wireguard_go(self.srv, topo.unique_ifname("fl"), sk[0], PORT, [to_client], address=f"{SERVER_IN}/24",
                         mtu=1420)
            wireguard_go(self.cli, topo.unique_ifname("fl"), ck[0], 0, [to_server], address=f"{CLIENT_IN}/24",
                         mtu=1420)
        wait_ping(self.cli, SERVER_IN)
        for size in (56, 200, 1000, 1392):
            self.cli.run(["ping", "-c", "3", "-i", "0.05", "-s", str(size), SERVER_IN], check=False)
        time.sleep(0.2)
        self.captured = capture_read(self.capture)
        self.capture.close()
        self.srv.popen(["iperf3", "-s", "-B", SERVER_IN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    # -- what the server's side shows --

    def server_cpu(self) -> float:
        total = 0.0
        for pid in self.srv.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            if comm in ("iperf3", "ping", "ip", "cat"):
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK
        return total

    def udp_snmp(self) -> dict:
        lines = [ln.split() for ln in self.srv.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
        return dict(zip(lines[0][1:], map(int, lines[1][1:])))

    def atk_link_rx(self) -> int:
        link = self.srv.ip_json("-s", "link", "show", "dev", "srv-atk")[0]
        return int(link["stats64"]["rx"]["packets"])

    def drops(self) -> dict:
        if self.server_tp is None:
            return {}
        res = run_tunnel(self.srv, self.server_tp.state_dir, "show", self.server_tp.ifname, "--json")
        if res.returncode != 0:
            return {}
        return json.loads(res.stdout)["counters"].get("drops", {})

    # -- traffic --

    def attacker(self, pool_path: str, rate: float, seconds: float) -> subprocess.Popen:
        # Ahead of the tunnels in the scheduler, so that it offers the same rate to either kind.
        return self.atk.popen(["nice", "-n", "-10", sys.executable, "-c", _SENDER, pool_path, SERVER_ATK, str(PORT), str(rate), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def iperf(self, seconds: float) -> float:
        for _ in range(3):
            r = self.cli.run(["iperf3", "-c", SERVER_IN, "-B", CLIENT_IN, "-t", str(seconds), "-J"], check=False,
                             timeout=seconds + 60)
            if r.returncode == 0:
                return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            time.sleep(0.5)
        raise RuntimeError(f"iperf3 failed: {r.stdout[-300:]} {r.stderr[-300:]}")


def _attacker_result(proc) -> tuple[int, float, float]:
    """(datagrams sent, seconds, the sender's CPU seconds)."""
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"the attacker failed: {err.strip()[-500:]}")
    sent, secs, _errors, cpu = out.split()
    return int(sent), float(secs), float(cpu)


def measure(kind: str, seconds: float, rate: float, seed: int, echo, profile: str | None = None) -> dict:
    workdir = tempfile.mkdtemp(prefix="flood-")
    try:
        with topology("fl") as topo:
            st = Setup(topo, kind, workdir)
            pool, info = garbage_pool(random.Random(seed), st.captured, POOL_SIZE)
            pool_path = os.path.join(workdir, "pool.bin")
            write_pool(pool_path, pool)
            r: dict = {"pool": info}
            r["tcp_base"] = st.iperf(seconds)

            # The flood with a ping every 5 ms.
            snmp0, rx0, cpu0, drops0 = st.udp_snmp(), st.atk_link_rx(), st.server_cpu(), st.drops()
            atk = st.attacker(pool_path, rate, seconds + 1.0)
            time.sleep(0.5)
            spy = None
            if profile and st.server_tp is not None:
                pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
                spy = subprocess.Popen([pyspy or "py-spy", "record", "-p", str(st.server_tp.proc.pid), "-d", str(int(seconds)),
                                        "-r", "200", "--format", "raw", "-o", f"{profile}-{seed}.txt"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            count = int(seconds / PING_INTERVAL)
            ping = st.cli.run(["ping", "-q", "-i", str(PING_INTERVAL), "-c", str(count), "-W", "1", SERVER_IN],
                              check=False, timeout=seconds + 30)
            sent, secs, atk_cpu = _attacker_result(atk)
            if spy is not None:
                spy.wait(timeout=60)
            snmp1, rx1, cpu1, drops1 = st.udp_snmp(), st.atk_link_rx(), st.server_cpu(), st.drops()
            m = re.search(r"([\d.]+)% packet loss", ping.stdout)
            r["ping_loss"] = float(m.group(1)) if m else 100.0
            r["rate"] = sent / secs
            r["attacker_cpu"] = atk_cpu / secs
            r["arrived"] = rx1 - rx0
            r["rcvbuf_errors"] = snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0)
            r["in_errors"] = snmp1.get("InErrors", 0) - snmp0.get("InErrors", 0)
            r["cpu_per_m"] = (cpu1 - cpu0) / (r["arrived"] / 1e6) if r["arrived"] else None
            r["drops"] = {k: v - drops0.get(k, 0) for k, v in drops1.items() if v - drops0.get(k, 0)}

            # The flood with a single TCP stream.
            snmp0 = st.udp_snmp()
            atk = st.attacker(pool_path, rate, seconds + 1.5)
            time.sleep(0.5)
            r["tcp_flood"] = st.iperf(seconds)
            sent2, secs2, _ = _attacker_result(atk)
            snmp1 = st.udp_snmp()
            r["rcvbuf_errors_tcp"] = snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0)
            r["rate_tcp"] = sent2 / secs2
            r["tcp_ratio"] = r["tcp_flood"] / r["tcp_base"] if r["tcp_base"] else None
            echo(f"   {kind}: ping loss {r['ping_loss']:.1f}% at {r['rate'] / 1e3:.0f} k/s "
                 f"({r['arrived']} arrived), rcvbuf drops {r['rcvbuf_errors']} / {r['rcvbuf_errors_tcp']}, "
                 f"TCP {r['tcp_flood']:.0f} of {r['tcp_base']:.0f} Mbit/s ({100 * (r['tcp_ratio'] or 0):.0f}%), "
                 f"{r['cpu_per_m'] or 0:.2f} CPU-s per million (attacker {100 * r['attacker_cpu']:.0f}% of a core)")
            if r["drops"]:
                echo("      drops: " + ", ".join(f"{k} {v}" for k, v in sorted(r["drops"].items(), key=lambda kv: -kv[1])))
            return r
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the report -----------------------------------------------------------------------

COLUMNS = [
    ("ping_loss", "ping loss %", "{:.1f}"),
    ("tcp_flood", "TCP flood Mb/s", "{:.0f}"),
    ("tcp_base", "TCP base Mb/s", "{:.0f}"),
    ("tcp_ratio", "TCP kept %", "{:.0f}", 100),
    ("rcvbuf_errors", "rcvbuf drops", "{:.0f}"),
    ("rate", "garbage k/s", "{:.0f}", 1e-3),
    ("arrived", "arrived k", "{:.0f}", 1e-3),
    ("cpu_per_m", "CPU-s/M", "{:.2f}"),
    ("attacker_cpu", "atk CPU %", "{:.0f}", 100),
]


def _cell(values: list, fmt: str, scale: float) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(results: dict[str, list[dict]]) -> str:
    rows = []
    header = ["kind"] + [c[1] for c in COLUMNS]
    for kind, runs in results.items():
        rows.append([f"{kind} ({len(runs)})"] + [
            _cell([r.get(c[0]) for r in runs], c[2], c[3] if len(c) > 3 else 1) for c in COLUMNS])
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument("--rate", type=float, default=150_000, help="garbage datagrams a second (0: as fast as it goes)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--json", action="store_true", help="also print every run's figures as JSON")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="py-spy the server daemon during the ping phase (ours only): PREFIX-RUN.txt, collapsed stacks")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py creates network namespaces: run it as root")
        return 1
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            print(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
            return 1
    for tool in ["iperf3"] + (["wireguard-go", "wg"] if "wireguard-go" in kinds else []):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/setup.sh installs it)")
            return 1
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for run in range(args.runs):
            print(f"== run {run + 1}/{args.runs}", flush=True)
            for kind in kinds:
                results[kind].append(measure(kind, args.seconds, args.rate, seed=run + 1,
                                             echo=lambda s: print(s, flush=True),
                                             profile=args.profile))
    pool = next(iter(results.values()))[0]["pool"]
    print(f"\ngarbage pool per run: {POOL_SIZE} datagrams {pool['kinds']}, made from {pool['captured']} captured "
          f"datagrams of types {pool['captured_types']}; offered {args.rate / 1e3:.0f} k/s for {args.seconds:.0f} s "
          "a phase")
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
