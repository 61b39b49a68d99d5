"""ListenAddress: the UDP port bound to one address (a virtual IP), for real, against wireguard-go.

    [c] wireguard-go  c-s 10.63.0.2/24 ------------ s-c 10.63.0.1/24, later also 10.63.0.100 [s] tunnel up
        tunnel 10.64.0.2                                                   tunnel 10.64.0.1
                                                                   ListenAddress = 10.63.0.100

Checked: `tunnel up` starts before 10.63.0.100 is on any interface (IP_FREEBIND) and binds the
IPv4 port there alone (10.63.0.1 gets no WireGuard service); once the address is added, a stock
client dialling it handshakes, and every reply comes from it (wireguard-go would roam its endpoint
to any other source); the client's pinned socket is bound and connected on that address; a TCP
stream server -> client (TSO super-packets split into UDP GSO trains) arrives intact, with far
fewer sends than packets. A ListenAddress that is not an address is one line, nothing started.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.netns import Netns, WgPeer, genkey, wireguard_go
from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel, transfer, wait_ping

pytestmark = pytest.mark.netns

PORT = 51820
VIP, OWN, CLIENT = "10.63.0.100", "10.63.0.1", "10.63.0.2"
SERVER_IN, CLIENT_IN = "10.64.0.1", "10.64.0.2"


def _udp_sockets(ns: Netns) -> list[tuple[str, str]]:
    """(local, peer) of every UDP socket on PORT in NS."""
    out = []
    for line in ns.run(["ss", "-H", "-u", "-a", "-n"]).stdout.splitlines():
        fields = line.split()
        local, peer = fields[-2], fields[-1]
        if local.endswith(f":{PORT}"):
            out.append((local, peer))
    return out


def test_replies_leave_from_the_listen_address_with_pinned_sockets_and_gso(netns_factory, tmp_path):
    topo = netns_factory("la")
    c, s = topo.netns("c"), topo.netns("s")
    s.link_veth(c, f"{OWN}/24", f"{CLIENT}/24")
    sk, ck = genkey(), genkey()
    conf = interface_config(sk[0], PORT, [f"{SERVER_IN}/24"], [WgPeer(ck[1], [f"{CLIENT_IN}/32"])],
                            extra=f"ListenAddress = {VIP}")
    srv = start_tunnel(s, str(tmp_path), conf)
    srv.wait_up()  # before the address exists
    assert (f"{VIP}:{PORT}", "0.0.0.0:*") in _udp_sockets(s)
    assert not any(local == f"0.0.0.0:{PORT}" or local == f"{OWN}:{PORT}" for local, _ in _udp_sockets(s))

    s.addr("s-c", f"{VIP}/24")
    wg = wireguard_go(c, topo.unique_ifname("lac"), ck[0], 0,
                      [WgPeer(sk[1], [f"{SERVER_IN}/32"], f"{VIP}:{PORT}", persistent_keepalive=1)],
                      address=f"{CLIENT_IN}/24")
    wait_ping(c, SERVER_IN)
    result = transfer(s, c, CLIENT_IN, 5201, 8 << 20)  # server -> client: TSO split into GSO trains
    result.assert_intact(8 << 20)

    assert [p["endpoint"] for p in wg.dump()] == [f"{VIP}:{PORT}"]  # nothing came from elsewhere
    pinned = [(local, peer) for local, peer in _udp_sockets(s) if not peer.endswith(":*")]
    assert pinned and all(local == f"{VIP}:{PORT}" and peer.startswith(f"{CLIENT}:") for local, peer in pinned)
    state = json.loads(run_tunnel(s, srv.state_dir, "show", srv.ifname, "--json").stdout)
    counters = state["counters"]
    assert counters["tx_packets"] > 4 * counters["udp_sends"], counters
    assert not counters.get("drops", {}).get("udp_send_error"), counters
    assert srv.stop() == 0


def test_a_listen_address_that_is_no_address_is_one_line_and_nothing_starts(netns_factory, tmp_path):
    topo = netns_factory("la")
    s = topo.netns("s")
    sk, ck = genkey(), genkey()
    conf = interface_config(sk[0], PORT, [f"{SERVER_IN}/24"], [WgPeer(ck[1], [f"{CLIENT_IN}/32"])],
                            extra="ListenAddress = vip.example")
    srv = start_tunnel(s, str(tmp_path), conf)
    assert srv.proc.wait(30) == 1
    assert srv.log().strip().splitlines()[-1] == "tunnel: ListenAddress 'vip.example' is not an IP address"
    assert "Traceback" not in srv.log() and not srv.tun_exists()
