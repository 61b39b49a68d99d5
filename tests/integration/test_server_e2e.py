"""The server from nothing to connected clients, for real, in namespaces.

    #              10.99.0.2 c-s ---- s-c 10.99.0.1
    #   [c] alice: `tunnel up` with the generated file (full tunnel)
    #              10.98.0.2 d-s ---- s-d 10.98.0.1    [s] `tunnel server up`
    #   [d] bob: wireguard-go + `wg setconf` of the generated file, stripped
    #              10.97.0.2 e-s ---- s-e 10.97.0.1
    #   [e] carol: wireguard-go, added to the running server with `wg set`
    #
    # every client dials 10.99.0.1:51820; the pool is 10.8.0.0/24 + fd08::/64.

Checked: init -> up -> add-client -> ping through the tunnel; `wg show`
against our socket lists the right peers and counters; `tunnel show --json`
names them; `wg set` adds a peer that connects; remove-client ends a session
at once; add-client does not disturb a transfer already running; a client
past its expiry is removed and can no longer handshake; with a PostgreSQL
registry, changes made from another gateway's command line reach the daemon.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers.netns import Netns, WgPeer, genkey, wireguard_go
from tests.helpers.server import ServerProc
from tests.helpers.tunnelproc import Transfer, TunnelProc, ping, start_tunnel, tunnel_env, wait_ping
from tunnel.config import parse_config
from tunnel.protocol.crypto import encode_key

pytestmark = pytest.mark.netns

POOLS = ["10.8.0.0/24", "fd08::/64"]
SERVER_TUN = "10.8.0.1"


class Server(ServerProc):
    """`tunnel server` in namespace [s], joined to [c] (see the drawing above)."""

    def __init__(self, topo, tmp_path, split: bool = False, extra: tuple[str, ...] = (), init: bool = True):
        self.topo = topo
        self.s = topo.netns("s")
        self.c = topo.netns("c")
        self.s.link_veth(self.c, "10.99.0.1/24", "10.99.0.2/24")
        super().__init__(self.s, str(tmp_path), topo.unique_ifname("sv"))
        if init:
            self.init("10.99.0.1", pools=POOLS, extra=(*(["--split"] if split else []), *extra))


def client_up(ns: Netns, tmp_path, ifname: str, text: str) -> TunnelProc:
    """`tunnel up` of a generated client file in NS, until READY=1."""
    tp = start_tunnel(ns, str(tmp_path), text, ifname=ifname)
    tp.wait_up()
    return tp


def _client_pub(config_text: str) -> str:
    return encode_key(parse_config(config_text).interface.public_key)


def test_init_add_client_connect_show_and_remove(netns_factory, tmp_path):
    topo = netns_factory("sv")
    srv = Server(topo, tmp_path, extra=("--metrics", "127.0.0.1:9586"))
    srv.up()
    text = srv.add_client("alice")
    assert "AllowedIPs = 0.0.0.0/0, ::/0" in text and "Endpoint = 10.99.0.1:51820" in text
    alice = client_up(srv.c, tmp_path, topo.unique_ifname("sva"), text)
    wait_ping(srv.c, SERVER_TUN)
    ping(srv.c, SERVER_TUN)
    ping(srv.c, "fd08::1")

    # Debian's `wg` reads our socket: the right peer, allowed IPs, a handshake, bytes both ways.
    pub = _client_pub(text)
    dump = srv.wg_dump()
    assert list(dump) == [pub]
    _, psk, endpoint, allowed, latest, rx, tx, keepalive = dump[pub]
    assert psk != "(none)"
    assert endpoint.startswith("10.99.0.2:")
    assert allowed == "10.8.0.2/32,fd08::2/128"
    assert int(latest) > 0 and int(rx) > 0 and int(tx) > 0
    # Our own view names the peer and counts packets.
    state = srv.show_json()
    assert [p["name"] for p in state["peers"]] == ["alice"]
    assert state["counters"]["rx_packets"] > 0 and state["counters"]["handshakes"] >= 1
    scraped = srv.s.python("import urllib.request; print(urllib.request.urlopen("
                           "'http://127.0.0.1:9586/metrics', timeout=10).read().decode())").stdout
    assert f'friendly_name="alice",interface="{srv.ifname}",public_key="{pub}"' in scraped
    assert "wireguard_latest_handshake_seconds{" in scraped and "tunnel_handshakes_total{" in scraped
    listed = json.loads(srv.cli("list", "--json").stdout)
    assert listed[0]["name"] == "alice" and listed[0]["online"] and listed[0]["latest_handshake"] > 0

    # remove-client: gone from the running server at once, and the session with it.
    srv.cli("remove-client", "alice")
    assert srv.wg_dump() == {}
    res = srv.c.run(["ping", "-c", "2", "-W", "1", SERVER_TUN], check=False)
    assert res.returncode != 0, res.stdout
    assert "peer alice: removed" in srv.log()
    assert "no client named 'alice'" in srv.cli("show-client", "alice", check=False).stderr
    assert alice.stop() == 0


def test_wireguard_go_clients_by_generated_file_and_by_wg_set(netns_factory, tmp_path):
    topo = netns_factory("sv")
    srv = Server(topo, tmp_path, split=True)
    d, e = topo.netns("d"), topo.netns("e")
    srv.s.link_veth(d, "10.98.0.1/24", "10.98.0.2/24")
    srv.s.link_veth(e, "10.97.0.1/24", "10.97.0.2/24")
    d.route("10.99.0.0/24", "via", "10.98.0.1")
    e.route("10.99.0.0/24", "via", "10.97.0.1")
    srv.up()

    # bob: the generated file, stripped of wg-quick keys, fed to `wg setconf` on wireguard-go.
    text = srv.add_client("bob")
    config = parse_config(text)
    assert [str(n) for n in config.peers[0].allowed_networks()] == POOLS
    setconf = tmp_path / "bob.setconf"
    setconf.write_text(config.to_setconf_text())
    bob_if = topo.unique_ifname("svb")
    private, _ = genkey()
    bob = wireguard_go(d, bob_if, private, 0)
    d.run(["wg", "setconf", bob_if, str(setconf)])
    for address in config.interface.addresses:
        d.addr(bob_if, str(address))
    d.route("10.8.0.0/24", "dev", bob_if)
    wait_ping(d, SERVER_TUN)
    ping(d, SERVER_TUN)
    assert bob.dump()[0]["latest_handshake"] != "0"

    # carol: unknown to the files, added with `wg set` against our socket, then connects.
    carol_priv, carol_pub = genkey()
    srv.s.run(["wg", "set", srv.ifname, "peer", carol_pub, "allowed-ips", "10.8.0.50/32"])
    server_pub = srv.s.run(["wg", "show", srv.ifname, "public-key"]).stdout.strip()
    carol_if = topo.unique_ifname("svc")
    wireguard_go(e, carol_if, carol_priv, 0,
                 peers=[WgPeer(server_pub, ["10.8.0.0/24"], "10.99.0.1:51820", 25)],
                 address="10.8.0.50/24")
    wait_ping(e, SERVER_TUN)
    ping(e, SERVER_TUN)
    dump = srv.wg_dump()
    assert set(dump) == {_client_pub(text), carol_pub}
    assert dump[carol_pub][3] == "10.8.0.50/32" and int(dump[carol_pub][5]) > 0
    assert "added, allowed IPs 10.8.0.50/32" in srv.log()

    # A bad `wg set` is refused whole, with the errno wg understands.
    res = srv.s.run(["wg", "set", srv.ifname, "listen-port", "4000"], check=False)
    assert res.returncode != 0 and "Operation not supported" in res.stderr
    assert set(srv.wg_dump()) == {_client_pub(text), carol_pub}


def test_add_client_does_not_interrupt_a_running_transfer(netns_factory, tmp_path):
    topo = netns_factory("sv")
    srv = Server(topo, tmp_path, split=True)
    srv.up()
    text = srv.add_client("first")
    first = client_up(srv.c, tmp_path, topo.unique_ifname("svf"), text)
    wait_ping(srv.c, SERVER_TUN)
    pub = _client_pub(text)
    before = srv.wg_dump()[pub][4]  # latest handshake of the running session

    stop = str(tmp_path / "stop")
    flow = Transfer(srv.c, srv.s, SERVER_TUN, 5201, total=1 << 30, rate=4e6, stop_file=stop).start()
    Netns.wait_for(lambda: int(srv.wg_dump()[pub][5]) > 1_000_000, 30, what="transfer under way")
    for name in ("second", "third"):
        srv.add_client(name)
    rx_after_adds = int(srv.wg_dump()[pub][5])
    Netns.wait_for(lambda: int(srv.wg_dump()[pub][5]) > rx_after_adds + 1_000_000, 30,
                   what="transfer going on after add-client")
    open(stop, "w").close()
    flow.wait().assert_intact(at_least=2_000_000)
    dump = srv.wg_dump()
    assert len(dump) == 3
    assert dump[pub][4] == before, "the running session was replaced by a new handshake"
    assert first.stop() == 0


def test_an_expired_client_is_removed_and_cannot_handshake_again(netns_factory, tmp_path):
    topo = netns_factory("sv")
    srv = Server(topo, tmp_path, split=True)
    srv.up()
    staff = srv.add_client("staff")
    text = srv.add_client("temp", "--expires", "20s")
    temp_pub = _client_pub(text)
    listed = srv.cli("list").stdout
    assert re.search(r"^temp .* expires \S+ \S+ \(in \d+s\)", listed, re.M), listed
    temp = client_up(srv.c, tmp_path, topo.unique_ifname("svt"), text)
    wait_ping(srv.c, SERVER_TUN)
    assert temp_pub in srv.wg_dump()
    # at expiry the reconciler removes the peer (its session ends) without a command
    Netns.wait_for(lambda: temp_pub not in srv.wg_dump(), 60, what="expired peer removed")
    assert "client temp expired: its peer is removed" in srv.log()
    assert set(srv.wg_dump()) == {_client_pub(staff)}
    handshakes = srv.show_json()["counters"]["handshakes"]
    res = srv.c.run(["ping", "-c", "3", "-W", "1", SERVER_TUN], check=False)
    assert res.returncode != 0, res.stdout
    assert srv.show_json()["counters"]["handshakes"] == handshakes  # its initiations are refused
    assert "expired" in [line.split()[-1] for line in srv.cli("list").stdout.splitlines() if line.startswith("temp")]
    assert temp.stop() == 0


def test_postgres_registry_changes_from_another_gateway_reach_the_daemon(netns_factory, tmp_path, pg_server):
    """Gateway 1 runs in [s] on a PostgreSQL registry; gateway 2 (joined, on this host) only runs commands."""
    url = pg_server.create_database()
    topo = netns_factory("sv")
    srv = Server(topo, tmp_path, init=False)
    args = ["init", "--endpoint", "10.99.0.1", "--registry", url, "--name", "gw1"]
    for pool in POOLS:
        args += ["--pool", pool]
    srv.cli(*args)
    srv.up()
    # Another machine: its own directory and interface name (so its commands see no daemon here).
    gw2, gw2_if = str(tmp_path / "gw2"), topo.unique_ifname("sg")

    def on_gw2(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "tunnel", "server", *args, "--dir", gw2, "-i", gw2_if],
                             capture_output=True, text=True, env=tunnel_env(str(tmp_path / "gw2-state")), timeout=60)
        assert not check or res.returncode == 0, res.stderr
        return res

    on_gw2("join", "--registry", url, "--name", "gw2")
    assert "Gateway = gw2" in open(os.path.join(gw2, f"{gw2_if}.conf")).read()
    res = on_gw2("add-client", "alice", "--no-qr")
    assert "not running here" in res.stderr
    text = res.stdout
    pub = _client_pub(text)
    Netns.wait_for(lambda: pub in srv.wg_dump(), 2, what="a change on gateway 2 applied on gateway 1")
    alice = client_up(srv.c, tmp_path, topo.unique_ifname("sva"), text)
    wait_ping(srv.c, SERVER_TUN)
    on_gw2("remove-client", "alice")
    Netns.wait_for(lambda: srv.wg_dump() == {}, 2, what="removal on gateway 2 applied on gateway 1")
    res = srv.c.run(["ping", "-c", "2", "-W", "1", SERVER_TUN], check=False)
    assert res.returncode != 0, res.stdout
    assert alice.stop() == 0
