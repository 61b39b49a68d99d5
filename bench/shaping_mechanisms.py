"""Shaping (HTB, ours) against policing (nftables) for one client limited to 5 Mbit/s; prints, asserts nothing.

    .venv/bin/python bench/shaping_mechanisms.py [--seconds 5]

(Needs root; takes /tmp/bench.lock while it measures; namespaces "bwm<pid>-...".)

For each mechanism and direction, one TCP stream (iperf3) from client c1 of
tests/integration/shapingnet.py while c1 pings the server every 100 ms:
the rate the receiver saw, the sender's retransmissions, and the median
RTT under load. The policer is what nftables offers without queueing: a
named `limit` object per client and direction, looked up in a map by the
client's address (flat per packet, like our u32 hash), dropping what is over
the rate, on the netdev ingress (upload) and egress (download) of the
tunnel device; its burst is tried at 10 ms of the rate (as our HTB burst)
and at 64 KiB (one TSO/GRO super-packet).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.shaping import ClientLimit, Shaper  # noqa: E402
from tests.integration.shapingnet import CLIENT_ADDRESSES, IFNAME, PORT, SERVER, ShapingNet  # noqa: E402
from tests.helpers.netns import topology  # noqa: E402
from tunnel.undo import Journal  # noqa: E402

RATE = 5_000_000
POLICER = "tunnel_police_bench"


def policer_script(address: str, burst: int) -> str:
    per_second = RATE // 8
    return f"""
table netdev {POLICER} {{
  limit c1_up {{ rate over {per_second} bytes/second burst {burst} bytes }}
  limit c1_down {{ rate over {per_second} bytes/second burst {burst} bytes }}
  map up {{ type ipv4_addr : limit; elements = {{ {address} : "c1_up" }} }}
  map down {{ type ipv4_addr : limit; elements = {{ {address} : "c1_down" }} }}
  chain up {{ type filter hook ingress device "{IFNAME}" priority 0; limit name ip saddr map @up drop; }}
  chain down {{ type filter hook egress device "{IFNAME}" priority 0; limit name ip daddr map @down drop; }}
}}
"""


def transfer(net: ShapingNet, down: bool, seconds: int, congestion: str | None) -> tuple[float, int, float]:
    """(receiver Mbit/s, sender retransmits, median ping RTT ms under load)."""
    c1 = net.clients["c1"]
    argv = ["iperf3", "-c", SERVER[4], "-p", str(PORT["c1"]), "-t", str(seconds), "-J"] + (["-R"] if down else [])
    if congestion:
        argv += ["-C", congestion]
    iperf = c1.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    count = int(seconds / 0.1) - 10
    ping = c1.run(["sh", "-c", f"sleep 0.5; ping -c {count} -i 0.1 -W 2 {SERVER[4]}"],
                  check=False, timeout=seconds + 30).stdout
    out, _ = iperf.communicate(timeout=seconds + 30)
    end = json.loads(out)["end"]
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", ping)]
    return (end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"].get("retransmits", -1)),
            statistics.median(rtts) if rtts else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--congestion", help="TCP congestion control for the stream (iperf3 -C), e.g. cubic")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/shaping_mechanisms.py needs root (network namespaces, tc, nft)")
    address = CLIENT_ADDRESSES["c1"][0]
    with open("/tmp/bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with topology("bwm") as topo:
            net = ShapingNet(topo)
            idle = statistics.median(float(x) for x in re.findall(
                r"time=([\d.]+) ms", net.clients["c1"].run(["ping", "-c", "5", "-i", "0.1", SERVER[4]]).stdout))
            print(f"one TCP stream ({args.congestion or 'default congestion control'}), c1 limited to "
                  f"{RATE / 1e6:g} Mbit/s, {args.seconds} s; idle RTT {idle:.2f} ms")
            print(f"{'mechanism':34} {'direction':9} {'Mb/s':>6} {'retrans':>8} {'RTT ms':>7}")
            mechanisms = [("HTB shaping (tunnel egress / ifb)", None),
                          ("nft policer, burst 10 ms (6250 B)", RATE // 8 // 100),
                          ("nft policer, burst 64 KiB", 65536)]
            for name, burst in mechanisms:
                with tempfile.TemporaryDirectory() as state:
                    journal = Journal.open(os.path.join(state, "wg0.json"))
                    try:
                        if burst is None:
                            with net.g.entered():
                                Shaper(journal, IFNAME).apply({"c1": ClientLimit((address,), RATE, RATE)})
                        else:
                            net.g.run(["nft", "-f", "-"], input=policer_script(address, burst))
                        for down in (True, False):
                            mbps, retrans, rtt = transfer(net, down, args.seconds, args.congestion)
                            print(f"{name:34} {'down' if down else 'up':9} {mbps:6.2f} {retrans:8d} {rtt:7.1f}")
                    finally:
                        with net.g.entered():
                            journal.undo_all()
                        net.g.run(["nft", "delete", "table", "netdev", POLICER], check=False)


if __name__ == "__main__":
    main()
