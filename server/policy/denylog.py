"""One log line per denied attempt that the kernel chose to log, with the client's name.

Why NFLOG (`log group N` in the deny chains, read here over netlink) rather than the
kernel log (`log prefix`): the kernel log carries addresses only, not names, is off in
network namespaces other than the first (net.netfilter.nf_log_all_netns), and would put
every line through the kernel's printk; NFLOG messages cost nothing while nobody listens,
and the reader turns an address into a client name. The limits are in the kernel rule
itself, per source address and in total, so a flood never reaches Python: measured
(bench/policy_scale.py), 375,000 denied datagrams in 3 s from one client gave 5
messages, and the reader spent 2.5 ms of CPU.

Rules kept here:
- the kernel rate-limits (compile.py: per source address and in total),
  so a client hammering a denied port costs a few lines a minute and
  nothing in Python per dropped packet; this thread only formats;
- names come from a mapping the daemon replaces after each apply
  (Compiled.names: address or subnet -> client name);
- a daemon thread that stops within `poll` seconds of `close()`; a read
  error is logged once and ends the thread, never the daemon.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Mapping

from .nflog import LoggedPacket, NflogSocket
from .reasons import Reason

log = logging.getLogger("tunnel")


class Names:
    """Address -> client name, for host addresses and routed subnets."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.hosts = {ipaddress.ip_address(k): v for k, v in names.items() if "/" not in k}
        self.nets = [(ipaddress.ip_network(k), v) for k, v in names.items() if "/" in k]

    def get(self, addr) -> str | None:
        name = self.hosts.get(addr)
        if name is None:
            name = next((v for net, v in self.nets if addr in net), None)
        return name


def describe(ifname: str, pkt: LoggedPacket, names: Names) -> str:
    """'wg0: denied alice (10.8.0.2) -> 10.1.0.11:22/tcp: default deny: no rule accepts it'."""
    src_name = names.get(pkt.src)
    src = f"{src_name} ({pkt.src})" if src_name else str(pkt.src)
    if pkt.dport is not None:
        where = f"[{pkt.dst}]" if pkt.dst.version == 6 else str(pkt.dst)
        where = f"{where}:{pkt.dport}/{pkt.proto}"
    else:
        where = f"{pkt.dst} ({pkt.proto})"
    dst_name = names.get(pkt.dst)
    dst = f"{dst_name} ({where})" if dst_name else where
    try:
        why = Reason(pkt.prefix).explain()
    except ValueError:
        why = pkt.prefix or "denied"
    return f"{ifname}: denied {src} -> {dst}: {why}"


class DenyLog:
    """Reads the policy's NFLOG group in the current namespace and logs each message."""

    def __init__(self, ifname: str, group: int, names: Mapping[str, str], poll: float = 0.5,
                 logger: logging.Logger = log) -> None:
        self.ifname = ifname
        self.names = Names(names)
        self.poll = poll
        self.logger = logger
        self.sock = NflogSocket(group)  # raises OSError (e.g. group in use) in the caller
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"denylog-{ifname}", daemon=True)
        self.thread.start()

    def set_names(self, names: Mapping[str, str]) -> None:
        self.names = Names(names)  # one reference swap: the reader sees old or new, never half

    def _run(self) -> None:
        lost = 0
        try:
            while not self._stop.is_set():
                for pkt in self.sock.read(self.poll):
                    self.logger.info("%s", describe(self.ifname, pkt, self.names))
                if self.sock.lost != lost:
                    self.logger.warning("%s: %d batches of policy log messages lost (reader too slow)",
                                        self.ifname, self.sock.lost - lost)
                    lost = self.sock.lost
        except OSError as exc:
            if not self._stop.is_set():
                self.logger.warning("%s: policy log reader stopped: %s", self.ifname, exc)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(self.poll * 4)
        self.sock.close()
