"""Endpoints written as a v4-mapped IPv6 address, or as a link-local address with its scope (issue 9, items 8, 9).

    v4-mapped:   [c] c-s 10.51.0.1/24 (MTU 1400) ---- s-c 10.51.0.2/24 [s] server :51820
                 client: Endpoint = [::ffff:10.51.0.2]:51820, AllowedIPs = 0.0.0.0/0 (kill switch on)

    scoped:      [a] a-s fe80::A ---- s-a fe80::S1 [s] s-b fe80::S2 ---- b-s fe80::B [b]
                 a: Endpoint = [fe80::S1%a-s]:51820, full tunnel (kill switch on)
                 b: no endpoint; the server learns it only from `wg set ... endpoint [fe80::B%s-b]:51821`

Through the command line (`tunnel up` on every side, Debian's `wg` against
our control socket): the mapped endpoint is the IPv4 peer it names
everywhere (the MTU comes from the IPv4 route, the kill switch lets IPv4 UDP
to it out, `wg show` prints IPv4, `wg set` of the same form too); the scoped
one keeps its interface in the kill switch rule, in `wg show` and
`tunnel show`, and a `wg set` endpoint with a scope carries a handshake.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.netns import WgPeer, genkey
from tests.helpers.tunnelproc import interface_config, ping, run_tunnel, start_tunnel, wait_ping

pytestmark = pytest.mark.netns


def _link_local(ns, ifname: str) -> str:
    for a in ns.ip_json("-6", "addr", "show", "dev", ifname)[0]["addr_info"]:
        if a["scope"] == "link":
            return a["local"]
    raise AssertionError(f"no link-local address on {ifname}")


def _endpoints(ns, ifname: str) -> dict[str, str]:
    """`wg show IF endpoints`: public key -> endpoint as wg prints it."""
    out = ns.run(["wg", "show", ifname, "endpoints"]).stdout
    return dict(line.split("\t") for line in out.strip().splitlines())


def _killswitch(ns, ifname: str) -> str:
    return ns.run(["nft", "list", "table", "inet", f"tunnel_ks_{ifname}"]).stdout


def test_a_v4_mapped_endpoint_is_the_ipv4_peer(netns_factory, tmp_path):
    topo = netns_factory("hdep")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.51.0.1/24"], ["10.51.0.2/24"], mtu=1400)
    ck, sk = genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(
        sk[0], 51820, ["10.52.0.1/24"], [WgPeer(ck[1], ["10.52.0.2/32"])]))
    ts.wait_up()
    tc = start_tunnel(c, str(tmp_path), interface_config(
        ck[0], None, ["10.52.0.2/24"], [WgPeer(sk[1], ["0.0.0.0/0"], endpoint="[::ffff:10.51.0.2]:51820")]))
    tc.wait_up()
    # Before any handshake, as the config gave it: the IPv4 peer.
    assert _endpoints(c, tc.ifname) == {sk[1]: "10.51.0.2:51820"}
    assert c.ip_json("link", "show", "dev", tc.ifname)[0]["mtu"] == 1400 - 80
    assert "ip daddr 10.51.0.2 udp dport 51820 accept" in _killswitch(c, tc.ifname)
    wait_ping(c, "10.52.0.1")

    # The same form from `wg set`.
    c.run(["wg", "set", tc.ifname, "peer", sk[1], "endpoint", "[::ffff:10.51.0.2]:51820"])
    assert _endpoints(c, tc.ifname) == {sk[1]: "10.51.0.2:51820"}
    ping(c, "10.52.0.1")
    for tp in (tc, ts):
        assert tp.stop() == 0, tp.log()
    assert run_tunnel(c, tc.state_dir, "down", tc.ifname).returncode == 0


def test_a_link_local_endpoint_keeps_its_scope(netns_factory, tmp_path):
    topo = netns_factory("hdsc")
    a, s, b = topo.netns("a"), topo.netns("s"), topo.netns("b")
    a_s, s_a = a.link_veth(s)
    s_b, b_s = s.link_veth(b)
    for ns in (a, s, b):
        ns.wait_dad()
    s1, s2, bll = _link_local(s, s_a), _link_local(s, s_b), _link_local(b, b_s)
    ak, sk, bk = genkey(), genkey(), genkey()
    ts = start_tunnel(s, str(tmp_path), interface_config(
        sk[0], 51820, ["10.54.0.1/24"], [WgPeer(ak[1], ["10.54.0.2/32"]), WgPeer(bk[1], ["10.54.0.3/32"])]))
    ts.wait_up()

    # a: the scoped endpoint from its config, a full tunnel with the kill switch.
    ta = start_tunnel(a, str(tmp_path), interface_config(
        ak[0], None, ["10.54.0.2/24"], [WgPeer(sk[1], ["0.0.0.0/0"], endpoint=f"[{s1}%{a_s}]:51820")]))
    ta.wait_up()
    assert f'oifname "{a_s}" ip6 daddr {s1} udp dport 51820 accept' in _killswitch(a, ta.ifname)
    assert _endpoints(a, ta.ifname) == {sk[1]: f"[{s1}%{a_s}]:51820"}
    wait_ping(a, "10.54.0.1")
    shown = json.loads(run_tunnel(a, ta.state_dir, "show", ta.ifname, "--json").stdout)
    assert shown["peers"][0]["endpoint"] == f"[{s1}%{a_s}]:51820"
    # The server heard a from its link-local address on s-a: it says which link.
    assert _endpoints(s, ts.ifname)[ak[1]].startswith(f"[{_link_local(a, a_s)}%{s_a}]:")

    # b: no endpoint of its own; the server is told where b is by `wg set`, scope and all.
    tb = start_tunnel(b, str(tmp_path), interface_config(
        bk[0], 51821, ["10.54.0.3/24"], [WgPeer(sk[1], ["10.54.0.1/32"])]))
    tb.wait_up()
    s.run(["wg", "set", ts.ifname, "peer", bk[1], "endpoint", f"[{bll}%{s_b}]:51821", "persistent-keepalive", "1"])
    assert _endpoints(s, ts.ifname)[bk[1]] == f"[{bll}%{s_b}]:51821"
    wait_ping(s, "10.54.0.3")
    assert _endpoints(b, tb.ifname)[sk[1]] == f"[{s2}%{b_s}]:51820"
    for tp in (ta, tb, ts):
        assert tp.stop() == 0, tp.log()
