"""One log line per period summarising the drops, instead of one per packet.

Rules kept here:
- a daemon thread that only reads the data plane's drop counter (a copy,
  atomic under the GIL) and logs the change since its last look;
- nothing is logged in a quiet period; never a key or an address.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("tunnel")

PERIOD_SECONDS = 60.0


class DropSummary:
    def __init__(self, ifname: str, stats, period: float = PERIOD_SECONDS):
        self.ifname = ifname
        self.stats = stats
        self.period = period
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"drops-{ifname}", daemon=True)
        self.thread.start()

    def summary(self) -> str | None:
        """The line for the drops since the previous call, or None if there were none."""
        for _ in range(5):
            try:
                now = dict(self.stats.drops)
                break
            except RuntimeError:
                continue
        else:
            return None
        delta = {k: v - self.last.get(k, 0) for k, v in now.items() if v - self.last.get(k, 0) > 0}
        self.last = now
        if not delta:
            return None
        parts = ", ".join(f"{k} {v}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1]))
        return f"{self.ifname}: dropped {sum(delta.values())} packet(s) in the last {self.period:g} s: {parts}"

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            line = self.summary()
            if line:
                log.info("%s", line)

    def close(self) -> None:
        self._stop.set()
        line = self.summary()
        if line:
            log.info("%s", line)
