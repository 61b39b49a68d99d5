"""Per-client bandwidth limits (server/shaping) for real: tc, ifb and iperf3 in namespaces.

Topology: tests/integration/shapingnet.py (two clients behind one "tunnel"
interface wg0 of a gateway [g], iperf3 servers beyond it in [s]); and a real
TUN device for what is specific to TUNs.

What is checked:
- a client limited to 5 Mbit/s receives <= 5.5 Mbit/s with iperf3, both
  ways and over both IP versions, while an unlimited client in the same run
  gets several times more;
- a limit changed at runtime takes effect; a client limited at runtime is
  shaped; removing one client's limit leaves the other's class in place,
  untouched (its counters keep counting);
- the same on a real TUN device: UDP through its egress and its ingress;
- undo leaves no qdisc, class, filter, ifb device or nft table behind, run
  twice, and run by a fresh process reading the journal of a killed one.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from server.shaping import ClientLimit, Shaper, ifb_name
from tests.integration.shapingnet import CLIENT_ADDRESSES, IFNAME, ShapingNet, leftovers
from tunnel.undo import Journal

pytestmark = pytest.mark.netns

MBIT = 1_000_000
LIMIT = 5 * MBIT
CEILING = 5.5  # Mbit/s: the most a 5 Mbit/s client may measure
FLOOR = 2.5  # Mbit/s: it is shaped, not starved
C1, C2 = CLIENT_ADDRESSES["c1"], CLIENT_ADDRESSES["c2"]
IFB = ifb_name(IFNAME)


def classes(ns, dev: str) -> dict[str, tuple[str, int]]:
    """classid -> (rate as tc prints it, bytes sent) for each HTB class on DEV (tc 6.1 has no JSON for HTB classes)."""
    text = ns.run(["tc", "-s", "class", "show", "dev", dev]).stdout
    found = re.findall(r"^class htb (\S+) .*? rate (\S+) .*?\n Sent (\d+) bytes", text, re.M)
    return {classid: (rate, int(sent)) for classid, rate, sent in found}


@pytest.fixture
def net(netns_factory):
    return ShapingNet(netns_factory("bw"))


def test_limits_per_client_at_runtime_and_undo(net, tmp_path):
    journal = Journal.open(str(tmp_path / "wg0.json"))
    shaper = Shaper(journal, IFNAME)
    g = net.g
    try:
        # A: c1 limited both ways, c2 unlimited; both transfer at once.
        with g.entered():
            shaper.apply({"c1": ClientLimit(C1, LIMIT, LIMIT), "c2": ClientLimit(C2, None, None)})
        down = net.measure(down=True, version=4)
        up = net.measure(down=False, version=6)
        assert FLOOR < down["c1"] <= CEILING, down
        assert FLOOR < up["c1"] <= CEILING, up
        assert down["c2"] > 5 * down["c1"] and up["c2"] > 5 * up["c1"], (down, up)

        # B: c1 raised to 10 Mbit/s in place, c2 limited to 3 Mbit/s from now on.
        with g.entered():
            slot1 = shaper.slot("c1")
            shaper.set_client("c1", ClientLimit(C1, 10 * MBIT, 10 * MBIT))
            shaper.set_client("c2", ClientLimit(C2, 3 * MBIT, 3 * MBIT))
            assert shaper.slot("c1") == slot1
            slot2 = shaper.slot("c2")
        down = net.measure(down=True, version=6)
        up = net.measure(down=False, version=4)
        for figures in (down, up):
            assert CEILING < figures["c1"] <= 11, figures
            assert 1.5 < figures["c2"] <= 3.3, figures

        # C: c1's limit removed: c2's classes stay as they were, still counting.
        before = {dev: classes(g, dev)[f"1:{slot2:x}"] for dev in (IFNAME, IFB)}
        with g.entered():
            shaper.remove_client("c1")
        after = {dev: classes(g, dev) for dev in (IFNAME, IFB)}
        for dev in (IFNAME, IFB):
            assert f"1:{slot1:x}" not in after[dev]
            rate, sent = after[dev][f"1:{slot2:x}"]
            assert rate == before[dev][0] == "3Mbit"
            assert sent >= before[dev][1] > 0  # the same class, not a new one
        down = net.measure(down=True, version=4)
        assert down["c2"] <= 3.3 and down["c1"] > 5 * down["c2"], down
    finally:
        with g.entered():
            failures = journal.undo_all()
    assert failures == []
    assert leftovers(g, IFNAME) == []
    with g.entered():  # again: nothing to do, nothing fails
        assert Journal.open(journal.path).undo_all() == []


CRASH = """
import os, signal, sys
from tunnel.undo import Journal
from server.shaping import Shaper, ClientLimit
shaper = Shaper(Journal.open(sys.argv[1]), "wg0")
shaper.apply({"a": ClientLimit(("10.8.0.2", "fd08::2"), 5_000_000, 1_000_000),
              "b": ClientLimit(("10.8.0.3",), None, 2_000_000)})
os.kill(os.getpid(), signal.SIGKILL)
"""

UNDO = """
import json, sys
from tunnel.undo import Journal  # each step names the module of its undo kind: imported by the journal
print(json.dumps(Journal.open(sys.argv[1]).undo_all()))
"""


def test_undo_by_a_fresh_process_after_a_crash(netns_factory, tmp_path):
    g = netns_factory("bw").netns("g")
    g.run(["ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "peer0"])
    g.link_up(IFNAME)
    journal = str(tmp_path / "wg0.json")
    res = g.python(CRASH, journal, check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert IFB in {link["ifname"] for link in g.ip_json("link", "show", "type", "ifb")}
    assert leftovers(g, IFNAME) != []
    for _ in range(2):
        assert json.loads(g.python(UNDO, journal).stdout) == []
        assert leftovers(g, IFNAME) == []


# On a real TUN, in one process (the TUN lives as long as its fd): UDP from
# the gateway to two clients leaves through the TUN's egress and is read off
# its fd; UDP "from" the clients is written into the fd and arrives on the
# TUN's ingress. A client limited to 5 Mbit/s and an unlimited one are both
# offered 20 Mbit/s; the steady-state rate of each is what arrives between
# 0.5 s and 2 s.
TUN_TRAFFIC = r"""
import json, os, select, socket, struct, subprocess, sys, time
from pyroute2 import IPRoute
from tunnel.tun import Tun
from tunnel.undo import Journal
from server.shaping import Shaper, ClientLimit

LIMITED, FREE, GW = "10.8.0.2", "10.8.0.3", "10.8.0.1"
PAYLOAD, OFFERED, SECONDS, WINDOW = 1222, 20_000_000, 2.0, (0.5, 2.0)
tun = Tun("wg0", vnet_hdr=False, offload=False)
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname="wg0")[0]
    ipr.addr("add", index=idx, address=GW, prefixlen=24)
    ipr.link("set", index=idx, state="up")
report = {"qdisc_before": [q["kind"] for q in json.loads(subprocess.check_output(
    ["tc", "-j", "qdisc", "show", "dev", "wg0"]))]}
journal = Journal.open(sys.argv[1])
shaper = Shaper(journal, "wg0")
shaper.apply({"limited": ClientLimit((LIMITED,), 5_000_000, 5_000_000)})

def csum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def udp_packet(src, dst, dport):
    udp = struct.pack("!HHHH", 40000, dport, 8 + PAYLOAD, 0) + bytes(PAYLOAD)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + udp

def run(direction):
    os.set_blocking(tun.fd, False)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((GW, 9000))
    sink.setblocking(False)
    # One sending socket per client: datagrams queued for the limited one
    # count against their socket's send buffer.
    senders = {c: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for c in (LIMITED, FREE)}
    for s in senders.values():
        s.setblocking(False)
    packets = {c: udp_packet(c, GW, 9000) for c in (LIMITED, FREE)}
    arrivals = {LIMITED: [], FREE: []}
    start = time.monotonic()
    sent = 0
    per_second = OFFERED / 8 / (PAYLOAD + 28)
    buf = bytearray(65536)
    while (now := time.monotonic()) - start < SECONDS:
        while sent < (now - start) * per_second:
            for client in (LIMITED, FREE):
                try:
                    if direction == "down":
                        senders[client].sendto(bytes(PAYLOAD), (client, 9))
                    else:
                        os.write(tun.fd, packets[client])
                except (BlockingIOError, OSError):
                    pass  # a full queue drops, as it should
            sent += 1
        select.select([tun.fd, sink], [], [], 0.0005)
        t = time.monotonic() - start
        for _ in range(256):
            try:
                if direction == "down":
                    n = os.readv(tun.fd, [buf])
                    dst = socket.inet_ntoa(bytes(buf[16:20]))
                    if buf[0] >> 4 == 4 and dst in arrivals:  # not the kernel's own IPv6 chatter
                        arrivals[dst].append((t, n))
                else:
                    data, (addr, _) = sink.recvfrom(65536)
                    arrivals[addr].append((t, len(data) + 28))
            except BlockingIOError:
                break
    for s in (sink, *senders.values()):
        s.close()
    lo, hi = WINDOW
    return {c: sum(n for t, n in a if lo <= t < hi) * 8 / (hi - lo) / 1e6 for c, a in arrivals.items()}

report["down"] = run("down")
report["up"] = run("up")
report["classes"] = {dev: subprocess.check_output(["tc", "class", "show", "dev", dev], text=True).count("class htb")
                     for dev in ("wg0", "ifb4wg0")}
report["undo"] = journal.undo_all()
report["qdisc_after"] = [q["kind"] for q in json.loads(subprocess.check_output(
    ["tc", "-j", "qdisc", "show", "dev", "wg0"]))]
print(json.dumps(report))
"""


def test_real_tun_device(netns_factory, tmp_path):
    g = netns_factory("bw").netns("g")
    report = json.loads(g.python(TUN_TRAFFIC, str(tmp_path / "wg0.json")).stdout)
    # A TUN starts with the system's default qdisc (pfifo_fast here, fq_codel where
    # systemd sets net.core.default_qdisc): HTB replaces it, and undo brings it back.
    assert len(report["qdisc_before"]) == 1 and report["qdisc_before"][0] != "htb"
    assert report["classes"] == {"wg0": 1, "ifb4wg0": 1}
    for direction in ("down", "up"):
        rates = report[direction]
        assert FLOOR < rates["10.8.0.2"] <= CEILING, report
        assert rates["10.8.0.3"] > 3 * rates["10.8.0.2"], report
    assert report["undo"] == [], report
    assert report["qdisc_after"] == report["qdisc_before"]
    assert g.ip_json("link", "show", "type", "ifb") == []
