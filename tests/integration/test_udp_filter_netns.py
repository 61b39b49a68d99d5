"""Real traffic of every message type passes the socket filter and the pinned sockets; garbage is counted.

    +--------- [c] client ---------+        +--------- [s] server ---------+
    | tunnel up  10.52.0.1/24      |        | tunnel up  10.52.0.2/24 :51820|
    | c-s 10.51.0.1/24 ------------+--------+------------ s-c 10.51.0.2/24 |
    +------------------------------+        +------------------------------+

Our daemon at both ends, with offloads (GSO trains cross the veth whole and
reach the sockets as GRO trains: the kernel filter judges a train at once)
and without (`--no-offload`, and gso_max_segs 1 on the veth so the kernel
splits every train into single datagrams): handshake initiation and
response, transport carrying every inner size from 28 to 1420 bytes both
ways (near the MTU the padding stops at it: lengths that are no multiple of
16), TCP, and persistent keepalives; then the cookie reply, from a server
kept under load. Nothing real may be refused: the filter's drops are the
namespace's UDP InErrors that are not RcvbufErrors (a TCP stream may still
fill a receive buffer now and then: that is not the filter), and no
protocol drop. Garbage the filter refuses is counted in `tunnel show`.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel, transfer, wait_ping
from tests.helpers.netns import WgPeer, genkey
from tunnel.protocol import Device, SendDatagram
from tunnel.protocol.crypto import decode_key

pytestmark = pytest.mark.netns

PORT = 51820
CLIENT_IN, SERVER_IN = "10.52.0.1", "10.52.0.2"
SERVER_UNDER = "10.51.0.2"

# Echo every UDP payload from 0 to 1392 bytes (inner packets of 28 to 1420) through the tunnel, each
# answered before the next is sent; a lost one is retried, and printed if it never comes back.
_ECHO_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7007))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2000)
    s.sendto(data, addr)
"""

_ECHO_CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.connect((sys.argv[1], 7007))
lost, retried = [], 0
for n in range(0, 1393):
    data = os.urandom(n)
    for attempt in range(4):
        s.send(data)
        try:
            while s.recv(2000) != data:
                pass
            break
        except socket.timeout:
            retried += 1
    else:
        lost.append(n)
print(f"lost {lost} retried {retried}", flush=True)
"""


def _show(tp) -> dict:
    res = run_tunnel(tp.ns, tp.state_dir, "show", tp.ifname, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _build(netns_factory, tmp_path, args: tuple[str, ...] = (), server_args: tuple[str, ...] = ()):
    topo = netns_factory("fl")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.51.0.1/24"], ["10.51.0.2/24"])
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(sk[0], PORT, [f"{SERVER_IN}/24"],
                                                         [WgPeer(ck[1], [f"{CLIENT_IN}/32"])]), server_args or args)
    ts.wait_up()
    client = interface_config(ck[0], None, [f"{CLIENT_IN}/24"],
                              [WgPeer(sk[1], [f"{SERVER_IN}/32"], endpoint=f"{SERVER_UNDER}:{PORT}",
                                      persistent_keepalive=1)])
    return c, s, ts, sk, client


def _udp_errors(ns) -> dict:
    rows = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def _filtered(ns, before: dict) -> int:
    """Datagrams the socket filters in `ns` refused since `before` (errors that were not a full buffer)."""
    now = _udp_errors(ns)
    return (now["InErrors"] - before["InErrors"]) - (now["RcvbufErrors"] - before["RcvbufErrors"])


def _no_protocol_drops(*tps) -> None:
    for tp in tps:
        drops = _show(tp)["counters"].get("drops", {})
        assert not {k: v for k, v in drops.items() if k not in ("no_route", "udp_kernel_drops")}, (tp.ifname, drops)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_every_message_type_and_size_passes(netns_factory, tmp_path, offload):
    args = () if offload else ("--no-offload",)
    c, s, ts, _, client = _build(netns_factory, tmp_path, args)
    if not offload:
        for ns, dev in ((c, "c-s"), (s, "s-c")):
            ns.run(["ip", "link", "set", "dev", dev, "gso_max_segs", "1"])
    errors = {ns: _udp_errors(ns) for ns in (c, s)}
    tc = start_tunnel(c, str(tmp_path), client, args)
    tc.wait_up()
    wait_ping(c, SERVER_IN)  # initiation and response
    echo = s.popen([sys.executable, "-c", _ECHO_SERVER, SERVER_IN], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    res = c.run([sys.executable, "-c", _ECHO_CLIENT, SERVER_IN], timeout=120)
    assert res.stdout.startswith("lost [] "), res.stdout
    transfer(c, s, SERVER_IN, 5011, 20 * 1000 * 1000).assert_intact()
    # Idle: only persistent keepalives (32 bytes) go from the client, every second.
    before = _show(ts)["peers"][0]["rx_bytes"]
    time.sleep(3.5)
    grown = _show(ts)["peers"][0]["rx_bytes"] - before
    assert grown >= 2 * 32 and grown % 32 == 0, grown
    assert [_filtered(ns, errors[ns]) for ns in (c, s)] == [0, 0]
    _no_protocol_drops(ts, tc)
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()


def _spray_initiations(ns, server_public: str, stop: threading.Event, replies: list[int]) -> None:
    """Initiations with a valid mac1 from a key the server does not know, in bursts: the server's
    handshake queue passes its under-load mark again and again, and it answers with cookie replies."""
    attacker = Device(os.urandom(32), wall_epoch=time.time())
    peer = attacker.add_peer(decode_key(server_public), endpoint=(SERVER_UNDER, PORT))
    initiation = next(a.data for a in attacker.initiate(peer, 1.0) if type(a) is SendDatagram)
    with ns.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        while not stop.is_set():
            for _ in range(256):
                try:
                    sock.sendto(initiation, (SERVER_UNDER, PORT))
                except BlockingIOError:
                    pass
            while True:
                try:
                    sock.recv(100)
                    replies[0] += 1
                except BlockingIOError:
                    break
            time.sleep(0.1)


def test_a_cookie_reply_passes_and_garbage_is_counted(netns_factory, tmp_path):
    c, s, ts, sk, client = _build(netns_factory, tmp_path)
    errors = _udp_errors(c)
    stop, replies = threading.Event(), [0]
    sprayer = threading.Thread(target=_spray_initiations, args=(c, sk[1], stop, replies))
    sprayer.start()
    try:
        time.sleep(0.5)
        tc = start_tunnel(c, str(tmp_path), client)
        tc.wait_up()
        # The server is under load: the client's initiation gets a cookie reply, and only if that
        # passed the client's filter does its retry carry a valid mac2 that the server accepts.
        wait_ping(c, SERVER_IN, timeout=30)
    finally:
        stop.set()
        sprayer.join()
    assert replies[0] > 0
    server = _show(ts)["counters"]
    assert server["cookie_replies"] > replies[0], (server, replies)  # the client got at least one too
    _no_protocol_drops(tc)
    assert _filtered(c, errors) == 0

    # Garbage the filter refuses: counted by the kernel, read into `tunnel show` within a second or two.
    rnd = random.Random(3)
    garbage = [bytes([rnd.choice([0, 5, 9, 255])]) + rnd.randbytes(rnd.randrange(0, 1400)) for _ in range(500)]
    before = server["drops"].get("udp_kernel_drops", 0)
    with c.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for d in garbage:
            sock.sendto(d, (SERVER_UNDER, PORT))
            time.sleep(0.0005)  # gently: these must be the filter's drops, not a full buffer's
    c.wait_for(lambda: _show(ts)["counters"]["drops"].get("udp_kernel_drops", 0) - before >= len(garbage),
               timeout=10, what="the filter's drops in tunnel show")
    assert _show(ts)["counters"]["drops"]["udp_kernel_drops"] - before == len(garbage)
    wait_ping(c, SERVER_IN)
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()
