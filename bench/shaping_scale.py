"""Figures for server/shaping at scale; prints, asserts nothing. Needs root.

    .venv/bin/python bench/shaping_scale.py [--clients 1000] [--seconds 3] [--no-traffic]

(The script takes /tmp/bench.lock itself while it measures.)

- install: one `Shaper.apply` of N clients, each limited both ways with an
  IPv4 and an IPv6 address (4 filters, 2 classes, 2 queues per client; the
  ifb device and both roots included); then changing, adding and removing
  one client among N, and undoing everything (the journal, as `tunnel down`);
- traffic (iperf3, single TCP stream, through the gateway of
  tests/integration/shapingnet.py, namespaces "bwb<pid>-..."): what an
  *unlimited* client gets with no shaping installed, with shaping installed
  for one other client, and with N other clients; and what a client gets
  whose own class is far above what the path carries (so the figure is the
  cost of classifying and queueing, not the limit), with 1 and with N
  other clients. Flat per-packet cost shows as equal figures for 1 and N.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.shaping import ClientLimit, Shaper  # noqa: E402
from tests.integration.shapingnet import CLIENT_ADDRESSES, IFNAME, ShapingNet  # noqa: E402
from tests.netns import topology  # noqa: E402
from tunnel.undo import Journal  # noqa: E402

MBIT = 1_000_000


def many(n: int, down: int = 5 * MBIT, up: int = 2 * MBIT) -> dict[str, ClientLimit]:
    """N clients in 10.9.0.0/16 and fd09::/64, apart from the topology's own two."""
    v4, v6 = ipaddress.ip_address("10.9.0.2"), ipaddress.ip_address("fd09::2")
    return {f"bulk{i}": ClientLimit((str(v4 + i), str(v6 + i)), down, up) for i in range(n)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (tc)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench_install(net: ShapingNet, n: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        journal = Journal.open(os.path.join(state, "wg0.json"))
        shaper = Shaper(journal, IFNAME)
        clients = many(n)
        with net.g.entered():
            cpu = cpu_seconds()
            install = timed(lambda: shaper.apply(clients))
            cpu = cpu_seconds() - cpu
            one = next(iter(clients))
            change = timed(lambda: shaper.set_client(one, ClientLimit(clients[one].addresses, 7 * MBIT, 3 * MBIT)))
            add = timed(lambda: shaper.set_client("new", ClientLimit(("10.10.0.1", "fd0a::1"), MBIT, MBIT)))
            remove = timed(lambda: shaper.remove_client("new"))
            reapply = timed(lambda: shaper.apply(clients))
            undo = timed(journal.undo_all)
    print(f"install {n} clients (down+up, IPv4+IPv6 each): {install:.3f} s "
          f"({cpu:.3f} CPU-s in Python and tc; load average {os.getloadavg()[0]:.1f})")
    print(f"  change one: {change * 1e3:.1f} ms, add one: {add * 1e3:.1f} ms, remove one: {remove * 1e3:.1f} ms, "
          f"apply the same {n} again: {reapply * 1e3:.1f} ms")
    print(f"  undo all (tunnel down): {undo:.3f} s")


def throughput(net: ShapingNet, seconds: int) -> tuple[float, float]:
    """c2's download and upload, Mbit/s (c1 idle)."""
    return (net.start("c2", down=True, seconds=seconds).result() / 1e6,
            net.start("c2", down=False, seconds=seconds).result() / 1e6)


def bench_traffic(net: ShapingNet, n: int, seconds: int, runs: int) -> None:
    fast = 100_000 * MBIT  # far above anything the namespaces carry
    c1, c2 = CLIENT_ADDRESSES["c1"], CLIENT_ADDRESSES["c2"]
    cases = [
        ("no shaping installed", None),
        ("c2 unlimited, 1 other client limited", {"c1": ClientLimit(c1, 5 * MBIT, 5 * MBIT)}),
        (f"c2 unlimited, {n + 1} other clients limited", {"c1": ClientLimit(c1, 5 * MBIT, 5 * MBIT), **many(n)}),
        ("c2 in its own 100 Gbit/s class, 1 other client", {"c1": ClientLimit(c1, 5 * MBIT, 5 * MBIT),
                                                            "c2": ClientLimit(c2, fast, fast)}),
        (f"c2 in its own 100 Gbit/s class, {n + 1} others", {"c1": ClientLimit(c1, 5 * MBIT, 5 * MBIT),
                                                             "c2": ClientLimit(c2, fast, fast), **many(n)}),
    ]
    print(f"single TCP stream through the gateway, {seconds} s, median of {runs} runs taken round-robin "
          f"(veth stand-in for the TUN; compare ratios, not absolute figures)")
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
    for _ in range(runs):
        for name, clients in cases:
            with tempfile.TemporaryDirectory() as state:
                journal = Journal.open(os.path.join(state, "wg0.json"))
                try:
                    if clients is not None:
                        with net.g.entered():
                            Shaper(journal, IFNAME).apply(clients)
                    figures[name].append(throughput(net, seconds))
                finally:
                    with net.g.entered():
                        journal.undo_all()
    print(f"{'case':52} {'down Mb/s':>10} {'up Mb/s':>10}")
    for name, _ in cases:
        down = statistics.median(f[0] for f in figures[name])
        up = statistics.median(f[1] for f in figures[name])
        print(f"{name:52} {down:10.0f} {up:10.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-traffic", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/shaping_scale.py needs root (network namespaces, tc)")
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with topology("bwb") as topo:
            net = ShapingNet(topo)
            bench_install(net, args.clients)
            if not args.no_traffic:
                bench_traffic(net, args.clients, args.seconds, args.runs)


if __name__ == "__main__":
    main()
