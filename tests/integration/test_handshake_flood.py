"""A flood of handshake initiations does not stall the data path.

    [c] client + attacker socket  c-s 10.46.0.1/24 ---- s-c 10.46.0.2/24  [s] server :51820
        tunnel 10.47.0.1                                        tunnel 10.47.0.2

The attacker replays one initiation with a valid mac1 (made with the server's
public key, as anyone who knows it can) from an unknown static key; each one
would cost the server an X25519 before it finds the key unknown. While a
transfer runs through the tunnel, tens of thousands arrive: the daemon must
keep the transfer going (it processes a few handshakes per loop turn), and
once its queue is long it must answer with cookie replies (no DH) instead.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from tests.helpers.tunnelproc import (
    Transfer,
    interface_config,
    ping,
    run_tunnel,
    start_tunnel,
    wait_ping,
)
from tests.helpers.netns import WgPeer, genkey
from tunnel.protocol import Device, SendDatagram
from tunnel.protocol.crypto import decode_key

pytestmark = pytest.mark.netns

PORT = 51820


def test_initiation_flood_gets_cookie_replies_and_data_keeps_flowing(netns_factory, tmp_path):
    topo = netns_factory("hf")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.46.0.1/24"], ["10.46.0.2/24"])
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(sk[0], PORT, ["10.47.0.2/24"], [WgPeer(ck[1], ["10.47.0.1/32"])]))
    ts.wait_up()
    tc = start_tunnel(c, str(tmp_path), interface_config(
        ck[0], None, ["10.47.0.1/24"], [WgPeer(sk[1], ["10.47.0.2/32"], endpoint=f"10.46.0.2:{PORT}")]))
    tc.wait_up()
    wait_ping(c, "10.47.0.2")

    attacker = Device(os.urandom(32), wall_epoch=time.time())
    peer = attacker.add_peer(decode_key(sk[1]), endpoint=("10.46.0.2", PORT))
    initiation = next(a.data for a in attacker.initiate(peer, 1.0) if type(a) is SendDatagram)
    assert len(initiation) == 148

    flow = Transfer(c, s, "10.47.0.2", 5004, 40 * 1000 * 1000).start()
    replies = 0
    with c.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for i in range(30000):
            try:
                sock.sendto(initiation, ("10.46.0.2", PORT))
            except BlockingIOError:
                pass
            if i % 64 == 0:
                replies += _drain(sock)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            replies += _drain(sock)
            time.sleep(0.05)
    flow.wait(timeout=120).assert_intact()
    ping(c, "10.47.0.2")

    assert replies > 0, "no cookie reply reached the attacker"
    res = run_tunnel(s, ts.state_dir, "show", ts.ifname, "--json")
    assert res.returncode == 0, res.stderr
    counters = json.loads(res.stdout)["counters"]
    assert counters["cookie_replies"] > 0, counters
    # Every initiation it looked at was refused (cookie asked, or the key unknown); none was answered.
    assert counters["drops"].get("cookie_required", 0) > 0, counters
    # (udp_kernel_drops: those it never looked at, the kernel's for a full receive buffer.)
    assert set(counters["drops"]) <= {"cookie_required", "unknown_peer", "handshake_queue_full", "no_route",
                                      "udp_kernel_drops"}, counters
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return n
        assert len(data) == 64 and data[0] == 3, data[:4]
        n += 1
