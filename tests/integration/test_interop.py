"""Our daemon against wireguard-go, in both roles, over real namespaces.

    +------------- [c] client -------------+        +------------- [s] server -------------+
    | tunnel / wireguard-go                |        | wireguard-go / tunnel                |
    |   10.32.0.1/24  fd32::1/64           |        |   10.32.0.2/24  fd32::2/64  :51820   |
    | c-s 10.31.0.1/24 fd31::1/64 ---------+--------+--------- s-c 10.31.0.2/24 fd31::2/64 |
    +--------------------------------------+        +--------------------------------------+

`ours` says which end runs `tunnel up` (the other runs Debian's wireguard-go);
`underlay` says whether the client's Endpoint is 10.31.0.2:51820 or
[fd31::2]:51820. The client has the endpoint; the server learns the client's.

What each test shows: a handshake (as wireguard-go's `wg show` reports it),
pings both ways over IPv4 and IPv6 inside the tunnel, 100 MB of TCP each way
whose SHA-256 matches on the far side, the plain TUN path (--no-offload), and
the session carrying traffic across a real rekey after REKEY_AFTER_TIME.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.helpers.tunnelproc import Transfer, TunnelProc, ping, start_tunnel, transfer, wait_ping
from tests.helpers.tunnelproc import interface_config
from tests.helpers.netns import Netns, WgPeer, WireguardGo, genkey, wireguard_go
from tunnel.protocol.constants import REKEY_AFTER_TIME

pytestmark = pytest.mark.netns

PORT = 51820
UNDERLAY = {"v4": ("10.31.0.1/24", "10.31.0.2/24", "10.31.0.2"), "v6": ("fd31::1/64", "fd31::2/64", "[fd31::2]")}
CLIENT_IN = ("10.32.0.1", "fd32::1")
SERVER_IN = ("10.32.0.2", "fd32::2")
MB100 = 100 * 1000 * 1000


@dataclass
class Pair:
    client: Netns
    server: Netns
    ours: TunnelProc
    wg: WireguardGo
    underlay: str

    def handshakes(self) -> int:
        """wireguard-go's latest handshake time for its one peer (0: none yet)."""
        out = self.wg.wg("show", self.wg.ifname, "latest-handshakes").split()
        return int(out[1]) if len(out) == 2 else 0


def build(netns_factory, tmp_path, ours: str, underlay: str, args: tuple[str, ...] = ()) -> Pair:
    topo = netns_factory("io2")
    c, s = topo.netns("c"), topo.netns("s")
    # Both families on the underlay always: the variant only picks the endpoint.
    c.link_veth(s, ["10.31.0.1/24", "fd31::1/64"], ["10.31.0.2/24", "fd31::2/64"])
    endpoint = f"{UNDERLAY[underlay][2]}:{PORT}"
    ck, sk = genkey(), genkey()
    to_server = WgPeer(sk[1], [f"{SERVER_IN[0]}/32", f"{SERVER_IN[1]}/128"], endpoint=endpoint)
    to_client = WgPeer(ck[1], [f"{CLIENT_IN[0]}/32", f"{CLIENT_IN[1]}/128"])
    c_addr = [f"{CLIENT_IN[0]}/24", f"{CLIENT_IN[1]}/64"]
    s_addr = [f"{SERVER_IN[0]}/24", f"{SERVER_IN[1]}/64"]
    if ours == "client":
        wg = wireguard_go(s, topo.unique_ifname(), sk[0], PORT, [to_client], address=s_addr)
        tp = start_tunnel(c, str(tmp_path), interface_config(ck[0], None, c_addr, [to_server]), args)
    else:
        tp = start_tunnel(s, str(tmp_path), interface_config(sk[0], PORT, s_addr, [to_client]), args)
        tp.wait_up()
        wg = wireguard_go(c, topo.unique_ifname(), ck[0], 0, [to_server], address=c_addr)
    tp.wait_up()  # a no-op when already waited for
    return Pair(c, s, tp, wg, underlay)


def check_handshake_and_pings(pair: Pair) -> None:
    # The first ping waits for the handshake the client starts.
    wait_ping(pair.client, SERVER_IN[0])
    assert pair.handshakes() > 0
    peer = pair.wg.dump()[0]
    if pair.wg.ns is pair.server:
        # wireguard-go learnt our client's address from the handshake, in the underlay's family.
        expected = "10.31.0.1:" if pair.underlay == "v4" else "[fd31::1]:"
        assert peer["endpoint"].startswith(expected), peer
    for ns, targets in ((pair.client, SERVER_IN), (pair.server, CLIENT_IN)):
        for target in targets:
            ping(ns, target)


def check_transfers(pair: Pair) -> None:
    up = transfer(pair.client, pair.server, SERVER_IN[0], 5001, MB100)
    up.assert_intact(MB100)
    down = transfer(pair.server, pair.client, CLIENT_IN[1], 5002, MB100)
    down.assert_intact(MB100)
    print(f"{pair.ours.ns.short}=ours {pair.underlay}: up {8 * MB100 / up.seconds / 1e6:.0f} Mbit/s, "
          f"down {8 * MB100 / down.seconds / 1e6:.0f} Mbit/s")


def check_clean_stop(pair: Pair) -> None:
    assert pair.ours.alive(), pair.ours.log()
    assert pair.ours.stop() == 0, pair.ours.log()
    assert not pair.ours.tun_exists()
    assert not os.path.exists(pair.ours.state_file)
    assert not pair.ours.control_socket_exists()
    assert "Traceback" not in pair.ours.log(), pair.ours.log()


@pytest.mark.parametrize("underlay", ["v4", "v6"])
@pytest.mark.parametrize("ours", ["client", "server"])
def test_handshake_and_ping_both_families(netns_factory, tmp_path, ours, underlay):
    pair = build(netns_factory, tmp_path, ours, underlay)
    check_handshake_and_pings(pair)
    check_clean_stop(pair)


@pytest.mark.parametrize("underlay", ["v4", "v6"])
@pytest.mark.parametrize("ours", ["client", "server"])
def test_100mb_each_way_arrives_intact(netns_factory, tmp_path, ours, underlay):
    pair = build(netns_factory, tmp_path, ours, underlay)
    wait_ping(pair.client, SERVER_IN[0])
    check_transfers(pair)
    check_clean_stop(pair)


@pytest.mark.parametrize("ours", ["client", "server"])
def test_plain_tun_path_without_offload(netns_factory, tmp_path, ours):
    pair = build(netns_factory, tmp_path, ours, "v4", ("--no-offload",))
    check_handshake_and_pings(pair)
    check_transfers(pair)
    check_clean_stop(pair)


@pytest.mark.slow
@pytest.mark.parametrize("ours", ["client", "server"])
def test_session_survives_rekey(netns_factory, tmp_path, ours):
    """Traffic both ways for longer than REKEY_AFTER_TIME: a second handshake, no stream broken.

    With ours="client" our code must start the rekey; with ours="server"
    wireguard-go starts it and our responder must move to the new session.
    """
    pair = build(netns_factory, tmp_path, ours, "v4")
    wait_ping(pair.client, SERVER_IN[0])
    first = pair.handshakes()
    assert first > 0
    stop = str(tmp_path / "stop")
    # Paced streams (1 MB/s each) keep both directions busy across the rekey.
    up = Transfer(pair.client, pair.server, SERVER_IN[0], 5001, 10 * MB100, rate=1e6, stop_file=stop).start()
    down = Transfer(pair.server, pair.client, CLIENT_IN[1], 5002, 10 * MB100, rate=1e6, stop_file=stop).start()
    try:
        Netns.wait_for(lambda: pair.handshakes() > first, timeout=REKEY_AFTER_TIME + 90, interval=1.0,
                       what="a second handshake on wireguard-go's side")
        # Keep the streams on the new session for a while before ending them.
        for target in (SERVER_IN[0], SERVER_IN[1]):
            ping(pair.client, target, count=10)
        for target in (CLIENT_IN[0], CLIENT_IN[1]):
            ping(pair.server, target, count=10)
    finally:
        open(stop, "w").close()
    for t in (up, down):
        result = t.wait(timeout=60)
        result.assert_intact()
    assert pair.handshakes() > first
    # Our side saw both sessions complete: as initiator on the response, as
    # responder on the first data under the new keys (so it switched to them).
    assert pair.ours.log().count("handshake completed") >= 2, pair.ours.log()
    check_clean_stop(pair)
