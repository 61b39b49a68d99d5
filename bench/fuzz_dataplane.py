"""The data-plane fuzz at scale: prints datagrams per second, asserts the invariant.

    .venv/bin/python bench/fuzz_dataplane.py [--count 1000000] [--seed 1]

The same run as tests/dataplane/test_fuzz.py (random and mutated datagrams,
alone and as GRO trains, into a DataPlane over in-memory fakes whose Device
holds a live session), at 10^6 datagrams by default. Needs no root. The
figure is the receive path's cost for garbage: every datagram goes through
the data plane and the core's checks, none reaches the TUN.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.helpers.fuzz_plane import FuzzFailure, run  # noqa: E402


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    try:
        result = run(args.count, args.seed, snapshot_every=50_000)
    except FuzzFailure as exc:
        print(f"FAILED: {exc}")
        return 1
    seconds = result["seconds"]
    print(f"CPU: {_cpu()}; Python {platform.python_version()}")
    print(f"{args.count} datagrams in {seconds:.2f} s: {args.count / seconds:,.0f} datagrams/s, "
          f"{seconds / args.count * 1e6:.2f} us each; nothing written, no state changed")
    print(f"cookie replies: {result['cookie_replies']}")
    for reason, n in sorted(result["reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<22} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
