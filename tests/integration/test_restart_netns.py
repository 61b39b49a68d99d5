"""A restarted daemon resumes its sessions at once, with stock WireGuard at the other end.

    [c] client  c-s 10.61.0.2 ------------- s-c 10.61.0.1  [s] server :51820
        tunnel 10.62.0.2 (or the pool's first)             tunnel 10.62.0.1 (10.8.0.1)

Each test keeps a ping going through the tunnel every 0.1 s, kills our
daemon with SIGKILL mid-ping, runs `tunnel down` (what systemd's
ExecStopPost does) and starts it again:
- our server by `tunnel up CONFIG` (its peer has no Endpoint: the address
  comes from the endpoint file the last run wrote), and by `tunnel server up`
  (the registry's peer_endpoints), with wireguard-go as the client pinging;
- our client by `tunnel up CONFIG`, with wireguard-go as the server pinging
  the client (traffic the client does not start itself).
Without resumption the stock end notices only when its own timers fire
(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, ~15 s after its first unanswered packet);
the bound asserted (RESUME_BOUND after the new daemon is up) is far under
that and far over the ~0.1-0.5 s it takes (bench/restart.py prints figures).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers.netns import Netns, WgPeer, genkey, wireguard_go
from tests.helpers.pinglog import PingLog
from tests.helpers.server import ServerProc
from tests.helpers.tunnelproc import interface_config, run_tunnel, start_tunnel
from server.registry import open_registry
from tunnel.config import parse_config
from tunnel.endpointstore import parse_endpoint_text

pytestmark = pytest.mark.netns

PORT = 51820
SERVER_UNDER, CLIENT_UNDER = "10.61.0.1", "10.61.0.2"
SERVER_IN, CLIENT_IN = "10.62.0.1", "10.62.0.2"
RESUME_BOUND = 5.0  # seconds after the restarted daemon is up; the stock peer alone takes ~15


def _pair(netns_factory) -> tuple[Netns, Netns]:
    topo = netns_factory("rs")
    c, s = topo.netns("c"), topo.netns("s")
    s.link_veth(c, f"{SERVER_UNDER}/24", f"{CLIENT_UNDER}/24")
    return c, s


def _pinging(ns: Netns, target: str, path: str) -> PingLog:
    pl = PingLog.start(ns, target, path)
    Netns.wait_for(lambda: pl.replies(), 20, interval=0.1, what=f"a first ping reply from {target}")
    return pl


def _stored(path: str) -> dict:
    with open(path) as f:
        return json.load(f)["peers"]


def test_stock_client_resumes_when_a_tunnel_up_server_restarts(netns_factory, tmp_path):
    c, s = _pair(netns_factory)
    sk, ck = genkey(), genkey()
    conf = interface_config(sk[0], PORT, [f"{SERVER_IN}/24"], [WgPeer(ck[1], [f"{CLIENT_IN}/32"])])
    srv = start_tunnel(s, str(tmp_path), conf)
    srv.wait_up()
    wireguard_go(c, c.topo.unique_ifname("rsc"), ck[0], 0,
                 [WgPeer(sk[1], [f"{SERVER_IN}/24"], f"{SERVER_UNDER}:{PORT}")], address=f"{CLIENT_IN}/24")
    pl = _pinging(c, SERVER_IN, str(tmp_path / "ping.log"))
    # The handshake wrote where the client is, beside the journal (the test's state directory).
    store = os.path.join(srv.state_dir, f"{srv.ifname}.endpoints.json")
    Netns.wait_for(lambda: os.path.exists(store), 10, what=store)
    (endpoint,) = [e["endpoint"] for k, e in _stored(store).items() if k == ck[1]]
    assert parse_endpoint_text(endpoint)[0] == CLIENT_UNDER
    assert os.stat(store).st_mode & 0o777 == 0o600

    srv.stop(signal.SIGKILL)
    assert run_tunnel(s, srv.state_dir, "down", srv.ifname).returncode == 0
    again = start_tunnel(s, str(tmp_path), conf, ifname=srv.ifname)
    again.wait_up()
    t0 = time.time()
    gap = pl.wait_reply_after(t0, timeout=30)
    assert gap < RESUME_BOUND, (gap, again.log())
    assert "resuming 1 peer(s)" in again.log()
    pl.stop()
    assert again.stop() == 0


def test_stock_client_resumes_when_tunnel_server_up_restarts(netns_factory, tmp_path):
    c, s = _pair(netns_factory)
    srv = ServerProc(s, str(tmp_path), c.topo.unique_ifname("rss"))
    srv.init(SERVER_UNDER, port=PORT, pools=["10.8.0.0/24"], extra=("--split",))
    srv.up()
    config = parse_config(srv.add_client("bob"))
    setconf = tmp_path / "bob.setconf"
    setconf.write_text(config.to_setconf_text())
    ifname = c.topo.unique_ifname("rsc")
    wireguard_go(c, ifname, genkey()[0], 0)
    c.run(["wg", "setconf", ifname, str(setconf)])
    for address in config.interface.addresses:
        c.addr(ifname, str(address))
    c.route("10.8.0.0/24", "dev", ifname)
    pl = _pinging(c, "10.8.0.1", str(tmp_path / "ping.log"))
    # The registry has the client's endpoint (the store's first write comes at the handshake).
    registry = os.path.join(srv.dir, f"{srv.ifname}.db")
    Netns.wait_for(lambda: _has_endpoint(registry), 10, what="the client's endpoint in the registry")

    srv.stop(signal.SIGKILL)
    assert srv.down().returncode == 0
    srv.up()
    t0 = time.time()
    gap = pl.wait_reply_after(t0, timeout=30)
    assert gap < RESUME_BOUND, (gap, srv.log())
    assert "resuming 1 peer(s)" in srv.log()
    pl.stop()
    assert srv.stop() == 0


def _has_endpoint(registry: str) -> bool:
    with open_registry(registry, create=False) as reg:
        return any(e.endpoint.startswith(CLIENT_UNDER + ":") for e in reg.peer_endpoints().values())


def test_our_client_resumes_traffic_a_stock_server_sends_after_it_restarts(netns_factory, tmp_path):
    c, s = _pair(netns_factory)
    sk, ck = genkey(), genkey()
    wireguard_go(s, s.topo.unique_ifname("rss"), sk[0], PORT, [WgPeer(ck[1], [f"{CLIENT_IN}/32"])],
                 address=f"{SERVER_IN}/24")
    conf = interface_config(ck[0], None, [f"{CLIENT_IN}/24"],
                            [WgPeer(sk[1], [f"{SERVER_IN}/24"], f"{SERVER_UNDER}:{PORT}")])
    cli = start_tunnel(c, str(tmp_path), conf)
    cli.wait_up()
    # The server pings the client: only the client's own handshake at start tells it where the client is.
    pl = _pinging(s, CLIENT_IN, str(tmp_path / "ping.log"))

    cli.stop(signal.SIGKILL)
    assert run_tunnel(c, cli.state_dir, "down", cli.ifname).returncode == 0
    again = start_tunnel(c, str(tmp_path), conf, ifname=cli.ifname)
    again.wait_up()
    t0 = time.time()
    gap = pl.wait_reply_after(t0, timeout=30)
    assert gap < RESUME_BOUND, (gap, again.log())
    pl.stop()
    assert again.stop() == 0
