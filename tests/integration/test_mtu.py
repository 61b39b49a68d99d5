"""Without MTU=, the tunnel's MTU comes from the route to the endpoint, less the overhead.

    [c] client  c-s 10.48.0.1/24 (MTU 1400) ---- s-c 10.48.0.2/24  [s] server :51820

As wg-quick: the route's MTU minus 80 (IPv6 + UDP + WireGuard), so the
tunnel here gets 1320, and a full-size packet through it still arrives.
"""

from __future__ import annotations

import pytest

from tests.helpers.tunnelproc import interface_config, start_tunnel, wait_ping
from tests.helpers.netns import WgPeer, genkey

pytestmark = pytest.mark.netns


def test_mtu_is_derived_from_the_route_to_the_endpoint(netns_factory, tmp_path):
    topo = netns_factory("mt")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.48.0.1/24"], ["10.48.0.2/24"], mtu=1400)
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(
        sk[0], 51820, ["10.49.0.2/24"], [WgPeer(ck[1], ["10.49.0.1/32"])], extra="MTU = 1320"))
    ts.wait_up()
    tc = start_tunnel(c, str(tmp_path), interface_config(
        ck[0], None, ["10.49.0.1/24"], [WgPeer(sk[1], ["10.49.0.2/32"], endpoint="10.48.0.2:51820")]))
    tc.wait_up()
    link = c.ip_json("link", "show", "dev", tc.ifname)[0]
    assert link["mtu"] == 1400 - 80, link
    wait_ping(c, "10.49.0.2")
    # 1320 - 20 (IPv4) - 8 (ICMP) bytes of payload, DF set: fits exactly, no fragmentation.
    r = c.run(["ping", "-c", "2", "-M", "do", "-s", "1292", "10.49.0.2"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()
