"""An Endpoint given as a host name is looked up again when handshakes keep failing.

    [c] client  tunnel up, Endpoint = vpnhost:51820    [s] server  tunnel up :51820
        c-s 10.43.0.1/24 -------------------------------- s-c 10.43.0.2/24 (and .3 later)

`ip netns exec` shows /etc/netns/NS/hosts as the namespace's /etc/hosts, so the
test controls what `vpnhost` resolves to inside the client namespace only. It
first points at an address nobody answers on; once the server's address is
written there, the client must find it while its handshakes keep failing (it
looks the name up again every 15 s of failure) and complete the handshake.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.tunnelproc import interface_config, start_tunnel, wait_ping
from tests.netns import WgPeer, genkey

pytestmark = pytest.mark.netns


def test_endpoint_host_name_is_resolved_again_after_failed_handshakes(netns_factory, tmp_path):
    topo = netns_factory("rr")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.43.0.1/24"], ["10.43.0.2/24", "10.43.0.3/24"])
    hosts = os.path.join(c.etc_dir(), "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n10.43.0.9 vpnhost\n")  # nobody there
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(
        sk[0], 51820, ["10.44.0.2/24"], [WgPeer(ck[1], ["10.44.0.1/32"])]))
    ts.wait_up()
    tc = start_tunnel(c, str(tmp_path), interface_config(
        ck[0], None, ["10.44.0.1/24"],
        [WgPeer(sk[1], ["10.44.0.2/32"], endpoint="vpnhost:51820", persistent_keepalive=1)]), args=["-v"])
    tc.wait_up()
    assert c.run(["ping", "-c", "1", "-W", "1", "10.44.0.2"], check=False).returncode != 0
    # In place: the file is bind-mounted over /etc/hosts in the client namespace.
    with open(hosts, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write("127.0.0.1 localhost\n10.43.0.3 vpnhost\n")
    try:
        wait_ping(c, "10.44.0.2", timeout=40)
    except TimeoutError:
        raise AssertionError(tc.log()) from None
    assert "now resolves to 10.43.0.3" in tc.log(), tc.log()
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()
