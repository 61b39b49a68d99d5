"""Figures for an interface with many peers; prints, asserts nothing. Needs root.

    .venv/bin/python bench/peers_scale.py [--peers 10000] [--seconds 5] [--runs 3] [--skip add-client,...]

(The script takes /tmp/bench.lock itself while it measures.)

In tunnel_lab's two namespaces, our server (`tunnel up`) is given 1 and
then PEERS peers, one of them the lab's client, a real `tunnel up` on the
other side; the others are random keys with one /32 each, either inside
the server's own subnet (10.77.0.0/16: no route each) or outside it
(10.100.0.0/16: a route each). For each, in one run:

- bring-up: from `tunnel up` to READY=1 (sd_notify: link, routes, control
  socket), wall and CPU seconds of the daemon;
- RSS of the idle daemon, and per peer (the difference to 1 peer);
- single-stream TCP through the one real peer (iperf3, client -> server),
  and the daemon's CPU-seconds per GB meanwhile: the per-packet cost;
- `wg showconf` and `wg syncconf` of the same peers (nothing to change), then
  of one more: wall seconds, as Debian's wg talks to our control socket;
- tear-down: SIGTERM to exit, every change undone.

The cases take turns RUNS times (1 peer, PEERS inside, PEERS outside, 1
peer, ...) and each figure is the median of its runs, with the range of the
throughput and CPU figures: "the same per-packet cost" is a claim about
medians, not about one run on a machine others share.

Then `tunnel server`: a registry with PEERS clients (seeded through the
registry API), `tunnel server up`, and one `tunnel server add-client`,
timed until it returns, which is when the running daemon has the new peer.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import ipaddress
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tunnel.keys import generate_private_key, public_key_of  # noqa: E402
from tunnel.secrets import write_private_file  # noqa: E402
from tunnel_lab.lab import CLIENT_UNDERLAY, SERVER_UNDERLAY, Lab  # noqa: E402

SERVER_INNER, CLIENT_INNER = "10.77.0.1", "10.77.0.2"
PORT = 51820
_CLK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def extra_peers(n: int, inside: bool) -> list[str]:
    """N [Peer] sections with random keys, one /32 each, inside or outside 10.77.0.0/16."""
    base = ipaddress.ip_address("10.77.1.0" if inside else "10.100.0.0")
    return [f"\n[Peer]\nPublicKey = {random_key()}\nAllowedIPs = {base + i}/32\n" for i in range(n)]


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Daemon:
    """`tunnel up CONF` (or `tunnel server up`) in a namespace, timed until READY=1."""

    def __init__(self, lab: Lab, ns: str, argv: list[str], name: str):
        self.lab = lab
        self.notify_path = os.path.join(lab.workdir, f"{name}.notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONPATH=ROOT,
                   TUNNEL_STATE_DIR=os.path.join(lab.workdir, f"state-{name}"))
        self.log_path = os.path.join(lab.workdir, f"{name}.log")
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = lab.popen(ns, [sys.executable, "-m", "tunnel", *argv], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=ROOT)  # `-m tunnel` imports from the working directory first
        self.ready_after = self.ready_cpu = None

    def wait_ready(self, timeout: float = 600.0) -> float:
        self.notify.settimeout(1.0)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                data = self.notify.recv(4096)
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited {self.proc.returncode}: {self.log()[-2000:]}")
                continue
            if b"READY=1" in data:
                self.ready_after = time.monotonic() - self.started
                self.ready_cpu = proc_cpu(self.proc.pid)
                return self.ready_after
        raise RuntimeError(f"no READY=1 after {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> float:
        """SIGTERM; seconds until it exited (its tear-down: every change undone)."""
        start = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(600)
        self.notify.close()
        return time.monotonic() - start


def ping_until(lab: Lab, target: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while lab.run(lab.client, ["ping", "-c", "1", "-W", "1", target]).returncode != 0:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"no ping reply from {target} after {timeout} s")
    return time.monotonic() - start


def iperf(lab: Lab, seconds: int) -> tuple[float, float]:
    """Single stream client -> server: (Mbit/s, GB)."""
    import json

    for _ in range(3):
        r = lab.run(lab.client, ["iperf3", "-c", SERVER_INNER, "-B", CLIENT_INNER, "-t", str(seconds), "-J"],
                    timeout=seconds + 60)
        try:
            end = json.loads(r.stdout)["end"]["sum_received"]
            return end["bits_per_second"] / 1e6, end["bytes"] / 1e9
        except (ValueError, KeyError):
            time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {r.stdout[-300:]} {r.stderr[-300:]}")


def timed_run(lab: Lab, ns: str, argv: list[str]) -> float:
    start = time.monotonic()
    r = lab.run(ns, argv, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return time.monotonic() - start


def one_interface(lab: Lab, n: int, inside: bool, seconds: int, traffic: bool) -> dict:
    """Server with N peers (one real); returns its figures."""
    skey, ckey = generate_private_key(), generate_private_key()
    sdir = os.path.join(lab.workdir, "server")
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    spath = os.path.join(sdir, f"{lab.ifname_s}.conf")
    cpath = os.path.join(sdir, f"{lab.ifname_c}.conf")
    server = (f"[Interface]\nPrivateKey = {skey}\nListenPort = {PORT}\nAddress = {SERVER_INNER}/16\n"
              f"\n[Peer]\nPublicKey = {public_key_of(ckey)}\nAllowedIPs = {CLIENT_INNER}/32\n"
              + "".join(extra_peers(n - 1, inside)))
    client = (f"[Interface]\nPrivateKey = {ckey}\nAddress = {CLIENT_INNER}/16\n"
              f"\n[Peer]\nPublicKey = {public_key_of(skey)}\nAllowedIPs = {SERVER_INNER}/32\n"
              f"Endpoint = {SERVER_UNDERLAY}:{PORT}\nPersistentKeepalive = 25\n")
    write_private_file(spath, server)
    write_private_file(cpath, client)
    r: dict = {"peers": n, "layout": "inside" if inside else "outside"}
    srv = Daemon(lab, lab.server, ["up", spath], f"s{n}{r['layout']}")
    cli = None
    try:
        r["up_s"] = srv.wait_ready()
        r["up_cpu_s"] = srv.ready_cpu
        time.sleep(1.0)
        r["rss_kb"] = proc_rss_kb(srv.proc.pid)
        cli = Daemon(lab, lab.client, ["up", cpath], f"c{n}{r['layout']}")
        cli.wait_ready()
        r["first_ping_s"] = ping_until(lab, SERVER_INNER)
        if traffic:
            lab.popen(lab.server, ["iperf3", "-s", "-B", SERVER_INNER], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            cpu0 = proc_cpu(srv.proc.pid)
            r["tcp_mbps"], gb = iperf(lab, seconds)
            r["cpu_s_per_gb"] = (proc_cpu(srv.proc.pid) - cpu0) / gb if gb else None
        conf = os.path.join(sdir, "showconf.conf")
        start = time.monotonic()
        shown = lab.run(lab.server, ["wg", "showconf", lab.ifname_s], timeout=600)
        r["showconf_s"] = time.monotonic() - start
        write_private_file(conf, shown.stdout)
        try:
            r["syncconf_same_s"] = timed_run(lab, lab.server, ["wg", "syncconf", lab.ifname_s, conf])
            write_private_file(conf, shown.stdout + f"\n[Peer]\nPublicKey = {random_key()}\nAllowedIPs = 10.99.0.1/32\n")
            r["syncconf_one_more_s"] = timed_run(lab, lab.server, ["wg", "syncconf", lab.ifname_s, conf])
        except RuntimeError as exc:
            print(f"  {n} peers: wg syncconf failed: {exc}", flush=True)
    finally:
        if cli is not None:
            cli.stop()
        r["down_s"] = srv.stop()
    return r


def add_client_bench(lab: Lab, n: int, tag: str = "srv") -> dict:
    """A registry of N clients, `tunnel server up`, then `add-client` three times, timed."""
    from server.registry import open_registry

    d = os.path.join(lab.workdir, tag)
    ifname = lab.ifname_s
    env = dict(os.environ, PYTHONPATH=ROOT, TUNNEL_STATE_DIR=os.path.join(lab.workdir, f"state-{tag}"))
    common = ["--dir", d, "-i", ifname]
    r = subprocess.run([sys.executable, "-m", "tunnel", "server", "init", "--endpoint", SERVER_UNDERLAY,
                        "--pool", "10.80.0.0/16", "--pool", "fd80::/64", "--no-nat", *common],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"tunnel server init: {r.stderr}")
    seed_start = time.monotonic()
    with open_registry(os.path.join(d, f"{ifname}.db"), create=False) as reg:
        reg._conn.execute("PRAGMA synchronous=OFF")  # seeding only: the bench's own shortcut
        v4, v6 = ipaddress.ip_address("10.80.0.2"), ipaddress.ip_address("fd80::2")
        for i in range(n):
            reg.add_client(f"c{i}", random_key(), preshared_key=random_key(),
                           addresses=[str(v4 + i), str(v6 + i)])
    seeded = time.monotonic() - seed_start
    out: dict = {"clients": n, "seed_s": seeded}
    srv = Daemon(lab, lab.server, ["server", "up", *common], f"{tag}up")
    try:
        out["server_up_s"] = srv.wait_ready()
        out["server_up_cpu_s"] = srv.ready_cpu
        time.sleep(1.0)
        out["rss_kb"] = proc_rss_kb(srv.proc.pid)
        times = []
        for i in range(3):
            cpu0 = proc_cpu(srv.proc.pid)
            start = time.monotonic()
            r = lab.run(lab.server, [sys.executable, "-m", "tunnel", "server", "add-client", f"laptop{i}", "--no-qr",
                                     *common], timeout=600, env=env)
            times.append(time.monotonic() - start)
            if r.returncode != 0 or "the running server has it" not in r.stderr:
                raise RuntimeError(f"add-client: {r.stderr.strip()[-500:]}")
            out.setdefault("daemon_cpu_s", []).append(proc_cpu(srv.proc.pid) - cpu0)
        out["add_client_s"] = times
    finally:
        out["down_s"] = srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    ap.add_argument("--runs", type=int, default=3, help="rounds of the cases, taken in turns; medians printed")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: outside, add-client, traffic")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # the labs' namespaces are removed on the way out
    if os.geteuid() != 0:
        sys.exit("bench/peers_scale.py needs root (network namespaces)")
    results = []
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cases = [(1, True), (args.peers, True)] + ([] if "outside" in skip else [(args.peers, False)])
        every: dict[tuple[int, bool], list[dict]] = {case: [] for case in cases}
        for _ in range(max(1, args.runs)):
            for n, inside in cases:
                with Lab("hdps") as lab:
                    every[(n, inside)].append(one_interface(lab, n, inside, args.seconds, "traffic" not in skip))
                print(_row(every[(n, inside)][-1]), flush=True)
        results = [_median(every[case]) for case in cases]
        added = one_client = None
        if "add-client" not in skip:
            with Lab("hdpa") as lab:
                one_client = add_client_bench(lab, 1, "srv1")
                added = add_client_bench(lab, args.peers)
    print()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"medians of {max(1, args.runs)} runs taken in turns")
    print(_HEADER)
    for r in results:
        print(_row(r))
    for r in results:
        if r.get("tcp_range"):
            (t0, t1), (c0, c1) = r["tcp_range"], r["cpu_range"]
            print(f"  {r['peers']} peers {r['layout']}: TCP {t0:.0f}-{t1:.0f} Mbit/s, {c0:.1f}-{c1:.1f} CPU-s/GB")
    one = results[0]
    for r in results[1:]:
        per_peer = (r["rss_kb"] - one["rss_kb"]) * 1024 / max(1, r["peers"] - 1)
        print(f"  {r['peers']} peers {r['layout']}: {per_peer:.0f} bytes of RSS per peer")
    if added is not None:
        per_client = (added["rss_kb"] - one_client["rss_kb"]) * 1024 / max(1, added["clients"] - 1)
        print(f"tunnel server with 1 client: up in {one_client['server_up_s']:.2f} s, RSS "
              f"{one_client['rss_kb'] / 1024:.0f} MiB; with {added['clients']}: {per_client:.0f} bytes of RSS per client")
        adds = added["add_client_s"]
        print(f"tunnel server with {added['clients']} clients: up in {added['server_up_s']:.2f} s "
              f"({added['server_up_cpu_s']:.2f} CPU-s), RSS {added['rss_kb'] / 1024:.0f} MiB; add-client "
              f"{statistics.median(adds):.2f} s median of {len(adds)} ({min(adds):.2f}-{max(adds):.2f}), daemon CPU "
              f"{statistics.median(added['daemon_cpu_s']):.2f} s each; tear-down {added['down_s']:.2f} s "
              f"(seeded in {added['seed_s']:.0f} s)")


def _median(runs: list[dict]) -> dict:
    """One dict of the runs' medians (and the range of the traffic figures)."""
    out = dict(runs[0])
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values and key not in ("peers",):
            out[key] = statistics.median(values)
    for key, name in (("tcp_mbps", "tcp_range"), ("cpu_s_per_gb", "cpu_range")):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[name] = (min(values), max(values))
    return out


_HEADER = (f"{'peers':>6} {'AllowedIPs':>10} {'up s':>6} {'up CPU':>6} {'RSS MiB':>8} {'ping s':>6} {'TCP Mb/s':>9} "
           f"{'CPU s/GB':>8} {'showconf':>8} {'sync=':>6} {'sync+1':>6} {'down s':>6}")


def _row(r: dict) -> str:
    def f(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if v is not None else "-"

    return (f"{r['peers']:>6} {r['layout']:>10} {f('up_s', '6.2f')} {f('up_cpu_s', '6.2f')} "
            f"{r['rss_kb'] / 1024:8.1f} {f('first_ping_s', '6.2f')} {f('tcp_mbps', '9.0f')} {f('cpu_s_per_gb', '8.1f')} "
            f"{f('showconf_s', '8.2f')} {f('syncconf_same_s', '6.2f')} {f('syncconf_one_more_s', '6.2f')} "
            f"{f('down_s', '6.2f')}")


if __name__ == "__main__":
    main()
