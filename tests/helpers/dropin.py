"""`tunnel-wg` in test namespaces, started and configured the way the tools that drive it do.

    wg = start_dropin(ns0)                   # `tunnel-wg IFACE` in ns0: returns once it has detached
    ns0.ip("link", "set", wg.ifname, "netns", ns1.name)
    wg.set("private-key", "/dev/stdin", "listen-port", "1", input=key)
    wg.wait_gone()                           # after `ip link del`, or its namespace went

Rules kept here:
- the daemon is the console script `tunnel-wg` of this interpreter's
  environment (a wrapper that runs `python -m tunnel.dropin_cli` when the
  project is not installed), exactly what wg-quick would run;
- interface names are unique on the machine (the UAPI sockets of every
  namespace share /var/run/wireguard) and registered with the topology, which
  removes a socket a killed daemon left;
- the detached daemon lives in the namespace it was started in, so the
  topology's teardown kills it with everything else there;
- `wg` finds the daemon by its socket whatever namespace it is run in; it is
  run in the daemon's own.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

from tests.helpers.netns import WG_SOCKET_DIR, Netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def program(workdir: str) -> str:
    """The `tunnel-wg` executable: the installed console script, or a wrapper written into WORKDIR."""
    script = os.path.join(os.path.dirname(sys.executable), "tunnel-wg")
    if os.access(script, os.X_OK):
        return script
    path = os.path.join(workdir, "tunnel-wg")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nPYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "
                f"-m tunnel.dropin_cli \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def daemon_pids(ifname: str) -> list[int]:
    """Live (not zombie) processes running `tunnel-wg ... IFNAME`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or len(argv) < 2:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if words and words[-1] == ifname and any(w.endswith("tunnel-wg") or w == "tunnel.dropin_cli" for w in words):
            found.append(int(entry))
    return found


@dataclass
class DropIn:
    """One `tunnel-wg` daemon started in namespace `ns` (where its UDP sockets live)."""

    ns: Netns
    ifname: str

    @property
    def socket_path(self) -> str:
        return os.path.join(WG_SOCKET_DIR, f"{self.ifname}.sock")

    def alive(self) -> bool:
        return bool(daemon_pids(self.ifname))

    def wg(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """`wg ARGS` (IFNAME is not added: say it where wg wants it)."""
        return self.ns.run(["wg", *args], input=input, check=check).stdout

    def set(self, *args: str, input: str | None = None) -> None:
        """`wg set IFNAME ARGS`; keys go through stdin ("/dev/stdin" in ARGS)."""
        self.ns.run(["wg", "set", self.ifname, *args], input=input)

    def show(self, what: str) -> str:
        return self.wg("show", self.ifname, what).strip()

    def status(self) -> dict:
        """`tunnel show IFNAME --json`: counters, drops, the MTU the data plane uses."""
        res = self.ns.run([sys.executable, "-m", "tunnel", "show", self.ifname, "--json"],
                          env=dict(os.environ, PYTHONPATH=ROOT))
        return json.loads(res.stdout)

    def transfer(self) -> dict[str, tuple[int, int]]:
        """`wg show IFNAME transfer`: public key -> (rx bytes, tx bytes)."""
        out = {}
        for line in self.show("transfer").splitlines():
            key, rx, tx = line.split("\t")
            out[key] = (int(rx), int(tx))
        return out

    def wait_gone(self, timeout: float = 20.0) -> None:
        """Until the daemon has exited and removed its socket (namespace clean-up may take a moment)."""
        Netns.wait_for(lambda: not self.alive() and not os.path.exists(self.socket_path), timeout,
                       interval=0.05, what=f"tunnel-wg {self.ifname} to exit")

    def stop(self, sig: int = 15) -> None:
        for pid in daemon_pids(self.ifname):
            os.kill(pid, sig)


def start_dropin(ns: Netns, workdir: str, ifname: str | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> DropIn:
    """`tunnel-wg [ARGS] IFNAME` in NS, to completion (it detaches); its interface and socket exist then."""
    ifname = ifname or ns.topo.unique_ifname("wd")
    ns.topo._wg_ifnames.add(ifname)
    res = ns.run([program(workdir), *args, ifname], check=False, env=env, timeout=30)
    assert res.returncode == 0, f"tunnel-wg {ifname} exited {res.returncode}: {res.stdout}{res.stderr}"
    assert stat.S_ISSOCK(os.stat(os.path.join(WG_SOCKET_DIR, f"{ifname}.sock")).st_mode)
    return DropIn(ns, ifname)


def link_stats(ns: Netns, ifname: str) -> dict[str, int]:
    """rx/tx bytes and packets of IFNAME in NS (`ip -s -j link show`): for a TUN, rx is what the daemon wrote."""
    data = ns.ip_json("-s", "link", "show", "dev", ifname)[0]["stats64"]
    return {"rx_bytes": data["rx"]["bytes"], "rx_packets": data["rx"]["packets"],
            "tx_bytes": data["tx"]["bytes"], "tx_packets": data["tx"]["packets"]}
