"""A ping running in the background whose replies are read back by their arrival time.

    pl = PingLog.start(ns, "10.8.0.1", path, interval=0.1)
    ...                                   # break and restart something
    pl.wait_reply_after(t0, timeout=30)   # seconds from t0 (wall clock) to the first reply after it

iputils' `ping -D` prints each reply with the wall time it arrived; that is
what is measured, so nothing depends on when this process gets to look.
The ping runs through Netns.popen: the namespace teardown stops it.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from tests.helpers.netns import Netns

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


@dataclass
class PingLog:
    proc: subprocess.Popen
    path: str

    @classmethod
    def start(cls, ns: Netns, target: str, path: str, interval: float = 0.1) -> "PingLog":
        # Intervals under 0.2 s need root, which namespace tests have.
        with open(path, "wb") as out:
            proc = ns.popen(["ping", "-D", "-n", "-i", str(interval), "-W", "1", target],
                            stdout=out, stderr=subprocess.STDOUT)
        return cls(proc, path)

    def replies(self) -> list[float]:
        """The wall times of the replies so far."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return [float(m.group(1)) for m in map(_REPLY.match, f) if m]

    def reply_after(self, t0: float) -> float | None:
        """Seconds from T0 (wall clock) to the first reply that arrived after it, or None yet."""
        later = [t for t in self.replies() if t > t0]
        return later[0] - t0 if later else None

    def wait_reply_after(self, t0: float, timeout: float) -> float:
        """As reply_after, waiting up to TIMEOUT seconds past T0 for it; raises if none came."""
        while True:
            found = self.reply_after(t0)
            if found is not None:
                return found
            if time.time() > t0 + timeout:
                raise AssertionError(f"no ping reply within {timeout} s of the restart")
            time.sleep(0.1)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a reply between wall times START and END (what an outage cost)."""
        times = [start] + [t for t in self.replies() if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
