r"""Two gateways of one server on a shared PostgreSQL registry, for real, in namespaces.

    #  [c1] c1-r 10.40.1.2 --- r-c1 .1 \                 / r-g1 10.50.1.2 --- g1-r 10.50.1.1 [g1] gateway 1 \
    #                                   [r] router ------                                                  g1-s .1
    #  [c2] c2-r 10.40.2.2 --- r-c2 .1 /                 \ r-g2 10.50.2.2 --- g2-r 10.50.2.1 [g2] gateway 2  |
    #                                                                                                      g2-s .2
    #                                                             [s] site: bridge `site` 10.60.0.100/24 -----/
    #
    # PostgreSQL runs on the host, on a Unix socket in a temp folder (the
    # gateways reach it through the file system, not the network); gateway 1
    # is `tunnel server init --registry`, gateway 2 `tunnel server join
    # --registry --endpoint 10.50.2.1`; both `tunnel server up`, the pool
    # 10.8.0.0/24 masqueraded toward the site by each.

Checked (the registry): add-client on gateway 1 reaches gateway 2 within 2 s
and the client connects through it; two add-client at the same moment on
the two gateways get distinct addresses; PostgreSQL stopped: both gateways
keep forwarding, add-client is refused in one line; started again: a change
made then reaches both; remove-client on gateway 2 ends the session on
gateway 1 within 2 s; restarting gateway 1 leaves gateway 2 and its clients
undisturbed.

Checked (fail-over): our client with both endpoints (as add-client writes
them) and the kill switch on downloads through gateway 1; gateway 1 SIGKILLed
-> traffic resumes through gateway 2 within 20 s, the download (reconnecting
at the application level) completes with the right SHA-256; gateway 1 back
-> the client returns to it; a capture of the client's uplink for the whole
run holds nothing routable but UDP to the two gateways' endpoints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.capture import Capture
from tests.helpers.netns import Netns
from tests.helpers.server import ServerProc
from tests.helpers.tunnelproc import ResumableDownload, run_tunnel, start_tunnel, tunnel_env, wait_ping
from tunnel.config import parse_config
from tunnel.protocol.crypto import encode_key

pytestmark = pytest.mark.netns

GW1, GW2 = "10.50.1.1", "10.50.2.1"
SITE = "10.60.0.100"
POOL = "10.8.0.0/24"
PORT = 51820


class Net:
    """The drawing above, with a gateway process helper for each of [g1] and [g2]."""

    def __init__(self, topo, tmp_path):
        self.topo, self.tmp = topo, tmp_path
        ns = {n: topo.netns(n) for n in ("r", "c1", "c2", "g1", "g2", "s")}
        self.r, self.c1, self.c2, self.g1, self.g2, self.s = (ns[n] for n in ("r", "c1", "c2", "g1", "g2", "s"))
        for i, c in ((1, self.c1), (2, self.c2)):
            c.link_veth(self.r, f"10.40.{i}.2/24", f"10.40.{i}.1/24")
            c.route("default", "via", f"10.40.{i}.1")
        for i, g in ((1, self.g1), (2, self.g2)):
            g.link_veth(self.r, f"10.50.{i}.1/24", f"10.50.{i}.2/24")
            g.route("10.40.0.0/16", "via", f"10.50.{i}.2")
        self.r.enable_forwarding()
        self.s.run(["ip", "link", "add", "name", "site", "type", "bridge"])
        self.s.link_up("site")
        self.s.addr("site", f"{SITE}/24")
        for i, g in ((1, self.g1), (2, self.g2)):
            _, site_end = g.link_veth(self.s, f"10.60.0.{i}/24")
            self.s.run(["ip", "link", "set", site_end, "master", "site"])
        (tmp_path / "gw1").mkdir()
        (tmp_path / "gw2").mkdir()
        self.gw1 = ServerProc(self.g1, str(tmp_path / "gw1"), topo.unique_ifname("gwa"))
        self.gw2 = ServerProc(self.g2, str(tmp_path / "gw2"), topo.unique_ifname("gwb"))

    def gateways_up(self, url: str) -> None:
        self.gw1.cli("init", "--endpoint", GW1, "--registry", url, "--name", "gw1", "--pool", POOL, "--split",
                     "--site", "10.60.0.0/24")
        self.gw2.cli("join", "--registry", url, "--name", "gw2", "--endpoint", GW2)
        self.gw1.up()
        self.gw2.up()

    def client(self, ns: Netns, text: str):
        tp = start_tunnel(ns, str(self.tmp), text, ifname=self.topo.unique_ifname("gwc"))
        tp.wait_up()
        return tp


def _pub(config_text: str) -> str:
    return encode_key(parse_config(config_text).interface.public_key)


def _address(config_text: str) -> str:
    return str(parse_config(config_text).interface.addresses[0].ip)


def _only_endpoint(text: str, endpoint: str) -> str:
    """The client's file dialling ENDPOINT alone (as a user would point an app at one gateway)."""
    lines = [line for line in text.splitlines() if not line.startswith("# FailoverEndpoints")]
    return "\n".join(f"Endpoint = {endpoint}" if line.startswith("Endpoint = ") else line for line in lines) + "\n"


def _reaches(ns: Netns, target: str) -> bool:
    return ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", target], check=False).returncode == 0


def test_gateways_share_one_registry(netns_factory, tmp_path):
    from tests.pgserver import PgServer, skip_or_fail

    skip_or_fail()
    net = Net(netns_factory("gw"), tmp_path)
    gw1, gw2 = net.gw1, net.gw2
    with PgServer.started() as pg:  # our own: this test stops and starts it
        net.gateways_up(pg.create_database())

        # add-client on gateway 1 -> gateway 2 has the peer within 2 s; the client connects through it.
        alice = gw1.add_client("alice")
        pub_a = _pub(alice)
        Netns.wait_for(lambda: pub_a in gw2.wg_dump(), 2, what="alice on gateway 2")
        alice_tp = net.client(net.c1, _only_endpoint(alice, f"{GW2}:{PORT}"))
        wait_ping(net.c1, SITE)
        assert int(gw2.wg_dump()[pub_a][4]) > 0 and int(gw1.wg_dump()[pub_a][4]) == 0

        # Two add-client at the same moment, one on each gateway: distinct addresses, both on both gateways.
        procs = [g.ns.popen([sys.executable, "-m", "tunnel", "server", "add-client", name, "--no-qr", "--dir",
                             g.dir, "-i", g.ifname], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=tunnel_env(g.state))
                 for g, name in ((gw1, "carol"), (gw2, "dave"))]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        carol, dave = (out for out, _ in outs)
        assert len({_address(alice), _address(carol), _address(dave)}) == 3
        for g in (gw1, gw2):
            Netns.wait_for(lambda: {_pub(carol), _pub(dave)} <= set(g.wg_dump()), 2, what="both on both")

        # carol dials gateway 1 (her file's first endpoint).
        assert f"Endpoint = {GW1}:{PORT}\n# FailoverEndpoints = {GW2}:{PORT}\n" in carol
        carol_tp = net.client(net.c2, carol)
        wait_ping(net.c2, SITE)
        pub_c = _pub(carol)
        assert int(gw1.wg_dump()[pub_c][4]) > 0

        # PostgreSQL stopped: both keep forwarding; changes are refused in one line.
        pg.stop()
        assert _reaches(net.c1, SITE) and _reaches(net.c2, SITE)
        res = gw1.cli("add-client", "erin", "--no-qr", check=False)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "unreachable" in res.stderr, res.stderr
        res = gw2.cli("remove-client", "carol", check=False)
        assert res.returncode == 1 and "unreachable" in res.stderr, res.stderr
        assert _reaches(net.c1, SITE) and _reaches(net.c2, SITE)

        # Started again: a change made now reaches both (each gateway catches up on its own).
        pg.start()
        res = gw2.cli("add-client", "frank", "--no-qr")
        pub_f = _pub(res.stdout)
        for g in (gw1, gw2):
            Netns.wait_for(lambda: pub_f in g.wg_dump(), 30, what="frank on both after PostgreSQL came back")

        # remove-client on gateway 2 ends carol's session on gateway 1.
        gw2.cli("remove-client", "carol")
        Netns.wait_for(lambda: pub_c not in gw1.wg_dump(), 2, what="carol removed from gateway 1")
        assert not _reaches(net.c2, SITE)
        assert carol_tp.stop() == 0

        # Restarting gateway 1 does not disturb gateway 2 or alice on it: gateway 2 changes nothing.
        peers, log_before = set(gw2.wg_dump()), gw2.log()
        assert gw1.stop() == 0
        gw1.up()
        assert _reaches(net.c1, SITE)
        assert set(gw2.wg_dump()) == peers
        assert gw2.log().count("reconciled with registry revision") == log_before.count("reconciled with")
        assert gw2.log().count("removed") == log_before.count("removed")
        assert alice_tp.stop() == 0


def test_a_client_fails_over_to_gateway_2_and_back_without_leaking(netns_factory, tmp_path, pg_server):
    net = Net(netns_factory("gw"), tmp_path)
    gw1, gw2 = net.gw1, net.gw2
    net.gateways_up(pg_server.create_database())
    text = gw1.add_client("alice", "--full")
    assert f"Endpoint = {GW1}:{PORT}\n# FailoverEndpoints = {GW2}:{PORT}\n" in text
    assert "AllowedIPs = 0.0.0.0/0" in text
    pub = _pub(text)

    capture = Capture(net.c1, "c1-r").start()  # before the tunnel: everything it ever sends
    frames = None
    try:
        alice = net.client(net.c1, text)
        assert "kill switch on" in alice.log()

        def endpoint_and_switches() -> tuple[str, int]:
            res = run_tunnel(net.c1, alice.state_dir, "show", alice.ifname, "--json")
            state = json.loads(res.stdout)
            return state["peers"][0]["endpoint"], state["counters"].get("endpoint_switches", 0)

        wait_ping(net.c1, SITE)
        assert endpoint_and_switches() == (f"{GW1}:{PORT}", 0)

        download = ResumableDownload(net.s, net.c1, SITE, 8080, size=3 << 20, rate=200_000).start()
        Netns.wait_for(lambda: int(gw1.wg_dump()[pub][6]) > 400_000, 30, what="download under way via gateway 1")
        gw1.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_ping(net.c1, SITE, timeout=20)  # measured from the kill: traffic is back within 20 s
        resumed = time.monotonic() - killed
        assert endpoint_and_switches() == (f"{GW2}:{PORT}", 1)
        assert f"switched to {GW2}:{PORT} (endpoint 2 of 2)" in alice.log()
        size, intact, connections = download.wait()
        assert (size, intact) == (3 << 20, True) and connections >= 2, (size, intact, connections)
        assert int(gw2.wg_dump()[pub][6]) > 0

        gw1.up()  # back (it undoes what the killed one left first)
        Netns.wait_for(lambda: endpoint_and_switches() == (f"{GW1}:{PORT}", 2), 90,
                       what="the client back on gateway 1 (one probe a minute)")
        assert f"{GW1}:{PORT} answers again: back on it" in alice.log()
        wait_ping(net.c1, SITE)
        assert int(gw1.wg_dump()[pub][4]) > 0
        assert alice.stop() == 0
    finally:
        frames = capture.stop()
    allowed = {(GW1, PORT), (GW2, PORT)}
    leaks = [f for f in frames if f.routable and f.udp_to not in allowed]
    assert not leaks, leaks[:10]
    assert {f.udp_to for f in frames if f.routable} == allowed
    print(f"traffic resumed {resumed:.1f} s after gateway 1 was killed; {len(frames)} frames captured")
