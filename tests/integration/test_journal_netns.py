"""A journal is undone only in the network namespace its changes were made in (issue 9, item 11).

    [a] `tunnel up X` (full tunnel: kill switch), then SIGKILL: X.json is left in the shared state dir
    [b] a veth named X with the address of a's config: someone else's link that happens to share the name

Both namespaces share one state directory, as `ip netns exec` runs share
/run/tunnel. In [b], `tunnel down X` and `tunnel up X.conf` must leave [b]'s
X alone and the journal whole, saying in one line where it belongs; in [a],
`tunnel down X` then undoes it all.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers.netns import WgPeer, genkey
from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel

pytestmark = pytest.mark.netns


def _one_line_error(res) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def test_a_journal_is_undone_only_in_its_own_namespace(netns_factory, tmp_path):
    topo = netns_factory("hdjn")
    a, b = topo.netns("a"), topo.netns("b")
    ifname = topo.unique_ifname("jn")
    key, peer = genkey(), genkey()
    text = interface_config(key[0], None, ["10.61.0.2/24"],
                            [WgPeer(peer[1], ["0.0.0.0/0"], endpoint="192.0.2.1:51820")])
    ta = start_tunnel(a, str(tmp_path), text, ifname=ifname)
    ta.wait_up()
    ks_table = f"tunnel_ks_{ifname}"
    assert a.run(["nft", "list", "table", "inet", ks_table], check=False).returncode == 0
    ta.stop(signal.SIGKILL)
    assert os.path.exists(ta.state_file)
    journal = open(ta.state_file).read()

    # [b]: an unrelated link of the same name, with the address a's run recorded.
    b.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name", "hdjn-peer"])
    b.addr(ifname, "10.61.0.2/24")
    b.link_up(ifname)

    message = _one_line_error(run_tunnel(b, ta.state_dir, "down", ifname))
    assert f"network namespace '{a.name}'" in message and f"ip netns exec {a.name} tunnel down {ifname}" in message
    res = run_tunnel(b, ta.state_dir, "up", ta.config_path)
    assert f"network namespace '{a.name}'" in _one_line_error(res)
    assert b.run(["ip", "link", "show", "dev", ifname], check=False).returncode == 0, "b's link was deleted"
    assert "10.61.0.2/24" in b.ip("-4", "addr", "show", "dev", ifname)
    assert open(ta.state_file).read() == journal

    # In its own namespace the journal is undone, and goes.
    res = run_tunnel(a, ta.state_dir, "down", ifname)
    assert res.returncode == 0, res.stderr
    assert a.run(["nft", "list", "table", "inet", ks_table], check=False).returncode != 0
    assert not os.path.exists(ta.state_file)
