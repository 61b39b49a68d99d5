"""Figures for the offload primitives; prints, asserts nothing.

    flock /tmp/bench.lock .venv/bin/python bench/offload_bench.py [--seconds 5] [--no-relay]

(The script also takes /tmp/bench.lock itself, so running it bare is safe.)

- checksum: big-integer sum of 1400 B vs a word loop;
- Splitter: µs per segment splitting 64 KiB TCP super-packets (v4, v6);
- Coalescer: µs per packet merging them back, flush included;
- relay: iperf3 (single TCP stream) between two namespaces through two
  TUNs joined by the test suite's Relay, in one Python thread, with and
  without TUN offloads. Needs root; namespaces are "io<pid>-..." and are
  always deleted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import sys
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.packets import ref_sum, tso  # noqa: E402
from tunnel.checksum import raw_sum, reduce  # noqa: E402
from tunnel.offload import Coalescer, Splitter  # noqa: E402


def per_call(stmt, number: int, repeat: int = 5) -> float:
    """Best of `repeat` runs, in µs per call."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def bench_checksum() -> None:
    data = memoryview(random.Random(1).randbytes(1400))
    conv = per_call(lambda: raw_sum(data), 20000)
    fast = per_call(lambda: reduce(raw_sum(data)), 20000)
    plain = per_call(lambda: raw_sum(data) % 0xFFFF, 20000)
    slow = per_call(lambda: ref_sum(bytes(data)), 200)
    print(f"checksum 1400 B: int.from_bytes alone {conv:.2f} µs, + folded reduce {fast:.2f} µs, "
          f"+ plain % {plain:.2f} µs, word loop {slow:.1f} µs")


def bench_split_and_coalesce() -> None:
    for v6 in (False, True):
        payload = random.Random(2).randbytes(65535 - 60 - 32)
        data = memoryview(tso(v6, payload, 1368))
        sp = Splitter()
        out = bytearray(2000)
        count = sp.load(data, 0, len(data))

        def split():
            sp.load(data, 0, len(data))
            w = sp.write
            for i in range(count):
                w(i, out, 16)

        us = per_call(split, 300) / count
        segs = []
        for i in range(count):
            n = sp.write(i, out, 0)
            segs.append(memoryview(bytes(out[:n])))
        co = Coalescer()

        def merge():
            add = co.add
            for s in segs:
                add(s)
            co.flush()

        merge_us = per_call(merge, 300) / count
        co_nv = Coalescer(verify=False)

        def merge_nv():
            add = co_nv.add
            for s in segs:
                add(s)
            co_nv.flush()

        nv_us = per_call(merge_nv, 300) / count
        name = "v6" if v6 else "v4"
        print(f"{name}: split {us:.2f} µs/segment ({count} segments of 1368 B); "
              f"coalesce {merge_us:.2f} µs/packet (verify off: {nv_us:.2f})")


def bench_relay(seconds: int) -> None:
    from tests.integration.test_io_netns import Relay, tun_in
    from tests.helpers.netns import topology

    with topology("io") as topo:
        a, b = topo.netns("ba"), topo.netns("bb")
        short = os.getpid() % 100000
        configs = [  # (label, TUN kwargs for [a], for [b], coalescer verify)
            ("offloads off, plain copy", dict(vnet_hdr=False, offload=False),
             dict(vnet_hdr=False, offload=False), True),
            ("TSO read + split, GRO write, verify", {}, {}, True),
            ("TSO read + split, GRO write, no verify", {}, {}, False),
            ("no TSO read (kernel segments), GRO write", dict(offload=False), {}, True),
        ]
        for n, (label, kw_a, kw_b, verify) in enumerate(configs):
            net = f"10.95.{n}"
            ta = tun_in(a, f"io{short}{n}a", [f"{net}.1/24"], **kw_a)
            tb = tun_in(b, f"io{short}{n}b", [f"{net}.2/24"], **kw_b)
            server = b.popen(["iperf3", "-s", "-1", "-B", f"{net}.2"], stdout=open(os.devnull, "w"))
            time.sleep(0.3)
            try:
                with Relay(ta, tb, verify=verify) as relay:
                    res = a.run(["iperf3", "-c", f"{net}.2", "-t", str(seconds), "-J"],
                                timeout=seconds + 30)
                mbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
                extra = ""
                if relay.offload:
                    co = relay.coalescers[1]
                    extra = (f"; {relay.segments / max(1, sum(relay.gso_reads.values())):.1f} "
                             f"packets per TUN read, "
                             f"{co.merged_packets / max(1, co.super_packets):.1f} per merged write")
                print(f"relay TUN->TUN, {label}: {mbps:.0f} Mb/s{extra}")
                assert not relay.errors, relay.errors
            finally:
                server.wait(10)
                ta.close()
                tb.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--no-relay", action="store_true")
    args = ap.parse_args()
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bench_checksum()
        bench_split_and_coalesce()
        if not args.no_relay:
            bench_relay(args.seconds)


if __name__ == "__main__":
    main()
