"""Figures for server/shaping at scale; prints, asserts nothing. Needs root.

    .venv/bin/python bench/shaping_scale.py [--clients 1000] [--seconds 3] [--runs 3] [--no-traffic]

(The script takes /tmp/bench.lock itself while it measures.)

Our tunnel runs on both ends of tunnel/lab.py's two namespaces, and the
server's TUN device is the one shaped:

- install: one `Shaper.apply` of N clients, each limited both ways with an
  IPv4 and an IPv6 address (per client 2 classes, 2 queues, 4 filters; the
  ifb device and both roots included), wall time and CPU time (Python + tc);
  then changing, adding and removing one client among N, re-applying the
  same N (nothing to do), and undoing everything (the journal, as `tunnel down`);
- traffic: a single TCP stream from the lab's client through the tunnel,
  both ways, with no shaping; with the client unlimited beside 1 and N
  limited clients; with the client in a class of its own far above what
  the tunnel carries (the cost of classifying and queueing, not of a
  limit), beside 1 and N others; and with the client limited to 100 Mbit/s.
  Cases are measured round-robin, the median printed. A flat cost per packet
  shows as equal figures beside 1 and beside N clients.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import statistics
import sys
import time
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyroute2.netns import setns  # noqa: E402

from server.shaping import ClientLimit, Shaper  # noqa: E402
from tunnel.undo import Journal  # noqa: E402
from tunnel_lab.lab import CLIENT_INNER, CLIENT_INNER6, SERVER_INNER, Lab  # noqa: E402

MBIT = 1_000_000
LAB_CLIENT = (CLIENT_INNER, CLIENT_INNER6)


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in namespace NS for the block (tc and netlink follow it)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(ns)
        yield
    finally:
        setns(home)
        os.close(home)


def many(n: int, down: int = 5 * MBIT, up: int = 2 * MBIT) -> dict[str, ClientLimit]:
    """N clients in 10.9.0.0/16 and fd09::/64, apart from the lab's own client."""
    v4, v6 = ipaddress.ip_address("10.9.0.2"), ipaddress.ip_address("fd09::2")
    return {f"bulk{i}": ClientLimit((str(v4 + i), str(v6 + i)), down, up) for i in range(n)}


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (tc)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_install(lab: Lab, n: int) -> None:
    journal = Journal.open(os.path.join(lab.workdir, "bench-install.json"))
    shaper = Shaper(journal, lab.ifname_s)
    clients = many(n)
    one = next(iter(clients))
    with inside(lab.server):
        cpu = cpu_seconds()
        install = timed(lambda: shaper.apply(clients))
        cpu = cpu_seconds() - cpu
        change = timed(lambda: shaper.set_client(one, ClientLimit(clients[one].addresses, 7 * MBIT, 3 * MBIT)))
        add = timed(lambda: shaper.set_client("new", ClientLimit(("10.10.0.1", "fd0a::1"), MBIT, MBIT)))
        remove = timed(lambda: shaper.remove_client("new"))
        reapply = timed(lambda: shaper.apply(clients))
        undo = timed(journal.undo_all)
    print(f"install {n} clients (down+up, IPv4+IPv6 each) on a real TUN: {install:.3f} s wall, "
          f"{cpu:.3f} CPU-s in Python and tc (load average {os.getloadavg()[0]:.1f})")
    print(f"  change one: {change * 1e3:.1f} ms, add one: {add * 1e3:.1f} ms, remove one: {remove * 1e3:.1f} ms, "
          f"apply the same {n} again: {reapply * 1e3:.1f} ms, undo all (tunnel down): {undo:.3f} s")


def iperf(lab: Lab, seconds: int, reverse: bool) -> float:
    argv = ["iperf3", "-c", SERVER_INNER, "-B", CLIENT_INNER, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    for _ in range(3):
        r = lab.run(lab.client, argv, timeout=seconds + 60)
        try:
            return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (ValueError, KeyError):
            time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {r.stdout[-300:]} {r.stderr[-300:]}")


def bench_traffic(lab: Lab, n: int, seconds: int, runs: int) -> None:
    fast = 100_000 * MBIT  # far above anything the tunnel carries
    other = {"other": ClientLimit(("10.77.0.9",), 5 * MBIT, 5 * MBIT)}
    cases: list[tuple[str, dict[str, ClientLimit] | None]] = [
        ("no shaping installed", None),
        ("unlimited, 1 other client limited", other),
        (f"unlimited, {n + 1} other clients limited", {**other, **many(n)}),
        ("own class at 100 Gbit/s, 1 other client", {**other, "lab": ClientLimit(LAB_CLIENT, fast, fast)}),
        (f"own class at 100 Gbit/s, {n + 1} others", {**other, "lab": ClientLimit(LAB_CLIENT, fast, fast),
                                                      **many(n)}),
        ("limited to 100 Mbit/s", {"lab": ClientLimit(LAB_CLIENT, 100 * MBIT, 100 * MBIT)}),
    ]
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    for _ in range(runs):
        for name, clients in cases:
            journal = Journal.open(os.path.join(lab.workdir, "bench-traffic.json"))
            try:
                if clients is not None:
                    with inside(lab.server):
                        Shaper(journal, lab.ifname_s).apply(clients)
                figures[name].append((iperf(lab, seconds, reverse=True), iperf(lab, seconds, reverse=False)))
            finally:
                with inside(lab.server):
                    journal.undo_all()
    print(f"single TCP stream through our tunnel, {seconds} s each, median of {runs} runs taken round-robin")
    print(f"{'the lab client is':42} {'down Mb/s':>10} {'up Mb/s':>10}")
    for name, _ in cases:
        down = statistics.median(f[0] for f in figures[name])
        up = statistics.median(f[1] for f in figures[name])
        print(f"{name:42} {down:10.0f} {up:10.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-traffic", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/shaping_scale.py needs root (network namespaces, tc)")
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with Lab("bwb") as lab:
            spath, cpath = lab.write_configs()
            lab.tunnel_up(lab.server, spath)
            lab.tunnel_up(lab.client, cpath)
            if not (lab.wait_link(lab.server, lab.ifname_s) and lab.wait_link(lab.client, lab.ifname_c)):
                sys.exit("the tunnel did not come up")
            bench_install(lab, args.clients)
            if args.no_traffic:
                return
            lab.popen(lab.server, ["iperf3", "-s", "-B", SERVER_INNER], stdout=open(os.devnull, "w"),
                      stderr=open(os.devnull, "w"))
            end = time.monotonic() + 15
            while lab.run(lab.client, ["ping", "-c", "1", "-W", "1", SERVER_INNER]).returncode != 0:
                if time.monotonic() > end:
                    sys.exit("no ping through the tunnel")
            bench_traffic(lab, args.clients, args.seconds, args.runs)


if __name__ == "__main__":
    main()
