"""Without MTU=, the tunnel's MTU comes from the route to the endpoint, less the overhead.

    [c] client  c-s 10.48.0.1/24 (MTU 1400) ---- s-c 10.48.0.2/24  [s] server :51820

As wg-quick: the route's MTU minus 80 (IPv6 + UDP + WireGuard), so the
tunnel here gets 1320, and a full-size packet through it still arrives.
Below 1280 + 80 the same rule holds (never a fallback bigger than the path),
with a warning that IPv6 inside the tunnel needs 1280: the interface then
carries IPv4 only, and still comes up with IPv6 in its config.
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


def test_a_path_under_1360_gives_its_mtu_less_80_and_a_warning(netns_factory, tmp_path):
    topo = netns_factory("hdmt")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.48.0.1/24"], ["10.48.0.2/24"], mtu=1300)
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(
        sk[0], 51820, ["10.49.0.2/24"], [WgPeer(ck[1], ["10.49.0.1/32", "fd49::1/128"])], extra="MTU = 1220"))
    ts.wait_up()
    # An IPv6 address and prefix in the client's config too: IPv4 must still come up.
    tc = start_tunnel(c, str(tmp_path), interface_config(
        ck[0], None, ["10.49.0.1/24", "fd49::1/64"],
        [WgPeer(sk[1], ["10.49.0.2/32", "fd49::2/128"], endpoint="10.48.0.2:51820")]))
    tc.wait_up()
    link = c.ip_json("link", "show", "dev", tc.ifname)[0]
    assert link["mtu"] == 1300 - 80, link
    assert "MTU 1220 (the route to the endpoint's MTU less 80): IPv6 inside the tunnel needs 1280" in tc.log()
    wait_ping(c, "10.49.0.2")
    r = c.run(["ping", "-c", "2", "-M", "do", "-s", str(1220 - 28), "10.49.0.2"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()
