"""A gateway with two clients behind one "tunnel" interface: for the shaping tests and benches.

    [c1] c1-h --+
     10.8.0.2   |
     fd08::2    +-- [h] br0 -- h-g ==== wg0 [g] g-s ------------------ s-g [s]
    [c2] c2-h --+                  10.8.0.1/24   192.0.2.1/24          192.0.2.2/24
     10.8.0.3                      fd08::1/64    2001:db8:2::1/64      2001:db8:2::2/64
     fd08::3                                                           iperf3 -s :5201 (for c1), :5202 (for c2)

wg0 in [g] stands in for the server's TUN: every client's packets arrive on it
(upload = its ingress) and leave through it (download = its egress), and [g]
routes between it and [s]. [h] is only a bridge, so that two clients share
one interface of [g] as peers share the TUN. What is specific to a TUN (no L2
header, noqueue by default, TSO super-packets from the daemon) is covered by
a separate test on a real TUN device.

Rules kept here:
- everything lives in the caller's namespaces (prefix given by the caller);
  iperf3 servers are tracked processes, killed with the namespaces;
- a transfer's figure is the receiver's (iperf3 -J "sum_received"): what
  the shaper let through, not what the sender pushed into queues.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from tests.helpers.netns import Netns, Topology

IFNAME = "wg0"
SERVER = {4: "192.0.2.2", 6: "2001:db8:2::2"}
CLIENT_ADDRESSES = {"c1": ("10.8.0.2", "fd08::2"), "c2": ("10.8.0.3", "fd08::3")}
PORT = {"c1": 5201, "c2": 5202}


@dataclass
class Transfer:
    """One running iperf3 client: `result()` waits and gives the receiver's bit/s."""

    proc: subprocess.Popen[Any]
    what: str

    def result(self, timeout: float = 30.0) -> float:
        out, err = self.proc.communicate(timeout=timeout)
        try:
            data = json.loads(out)
        except ValueError:
            raise AssertionError(f"iperf3 {self.what}: no JSON output: {err.strip()}") from None
        if "error" in data:
            raise AssertionError(f"iperf3 {self.what}: {data['error']}")
        return float(data["end"]["sum_received"]["bits_per_second"])


class ShapingNet:
    def __init__(self, topo: Topology) -> None:
        self.g, self.h, self.s = topo.netns("g"), topo.netns("h"), topo.netns("s")
        self.clients = {name: topo.netns(name) for name in CLIENT_ADDRESSES}
        self.h.run(["ip", "link", "add", "br0", "type", "bridge"])
        self.h.link_up("br0")
        _, hg = self.g.link_veth(self.h, ["10.8.0.1/24", "fd08::1/64"], None, name=IFNAME)
        self.h.run(["ip", "link", "set", hg, "master", "br0"])
        for name, ns in self.clients.items():
            v4, v6 = CLIENT_ADDRESSES[name]
            mine, theirs = ns.link_veth(self.h, [f"{v4}/24", f"{v6}/64"], None)
            self.h.run(["ip", "link", "set", theirs, "master", "br0"])
            ns.route("default", "via", "10.8.0.1")
            ns.route("-6", "default", "via", "fd08::1")
        self.g.link_veth(self.s, ["192.0.2.1/24", "2001:db8:2::1/64"], ["192.0.2.2/24", "2001:db8:2::2/64"])
        self.s.route("10.8.0.0/24", "via", "192.0.2.1")
        self.s.route("-6", "fd08::/64", "via", "2001:db8:2::1")
        self.g.enable_forwarding()
        for port in PORT.values():
            self.s.popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in PORT.values():
            self.s.wait_for(lambda port=port: f":{port} " in self.s.run(["ss", "-Hltn"]).stdout,
                            what=f"iperf3 on port {port}")
        for name, ns in self.clients.items():
            for version in (4, 6):
                ns.wait_for(lambda ns=ns, v=version: ns.run(["ping", f"-{v}", "-c1", "-W1", SERVER[v]],
                                                            check=False).returncode == 0,
                            what=f"{name} reaching the server over IPv{version}")

    def start(self, client: str, down: bool, version: int = 4, seconds: int = 2) -> Transfer:
        """iperf3 from CLIENT to [s]: download (-R, [s] sends) or upload."""
        argv = ["iperf3", "-c", SERVER[version], "-p", str(PORT[client]), "-t", str(seconds), "-J",
                "--connect-timeout", "5000"]
        if down:
            argv.append("-R")
        proc = self.clients[client].popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return Transfer(proc, f"{client} {'down' if down else 'up'} v{version}")

    def measure(self, down: bool, version: int = 4, seconds: int = 2) -> dict[str, float]:
        """Both clients at once, same direction: client -> Mbit/s received."""
        runs = {name: self.start(name, down, version, seconds) for name in self.clients}
        return {name: run.result() / 1e6 for name, run in runs.items()}

    def shaper_code(self, journal_path: str) -> str:
        """A Python prelude run in [g]: a Shaper on wg0 with its journal at JOURNAL_PATH."""
        return (
            "import json, sys\n"
            "from tunnel.undo import Journal\n"
            "from server.shaping import Shaper, ClientLimit\n"
            f"journal = Journal.open({journal_path!r})\n"
            f"shaper = Shaper(journal, {IFNAME!r})\n"
        )


def leftovers(ns: Netns, ifname: str) -> list[str]:
    """Every trace of shaping on IFNAME in NS: non-default qdiscs, classes, filters, ifb links, nft tables."""
    found = []
    for q in json.loads(ns.run(["tc", "-j", "qdisc", "show", "dev", ifname]).stdout or "[]"):
        if q.get("kind") not in ("noqueue", "pfifo_fast"):
            found.append(f"qdisc {q.get('kind')} {q.get('handle')}")
    for what in ("class", "filter"):  # text: tc 6.1 prints HTB classes and u32 filters without JSON
        found += [line for line in ns.run(["tc", what, "show", "dev", ifname]).stdout.splitlines() if line.strip()]
    for link in ns.ip_json("link", "show", "type", "ifb"):
        found.append(f"ifb link {link['ifname']}")
    tables = ns.run(["nft", "list", "tables"]).stdout.strip()
    if tables:
        found.append(f"nft tables: {tables}")
    return found
