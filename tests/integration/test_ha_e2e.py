r"""A virtual IP that moves between two gateways with keepalived, for real, in namespaces.

    #  [c1] wireguard-go  c1-r 10.40.1.2 --- r-c1 .1 \
    #                                                 [r] router: bridge `lan` 10.70.0.254/24
    #  [c2] tunnel up     c2-r 10.40.2.2 --- r-c2 .1 /        port r-g1 |      | port r-g2
    #                                          g1-r 10.70.0.1/24 [g1] gateway 1   [g2] gateway 2 g2-r 10.70.0.2/24
    #                                                    VIP 10.70.0.100/24 on whichever holds it
    #                                          g1-s 10.60.0.1 \                       / g2-s 10.60.0.2
    #                                                    [s] site: bridge `site` 10.60.0.100/24
    #
    # PostgreSQL on the host (a Unix socket in a temp folder) is the shared registry; gateway 1 is
    # `init`, gateway 2 `join`; `tunnel server ha --vip 10.70.0.100/24` on each (priority 150 and
    # 100); `tunnel server up` on each starts its keepalived (config, pid files and FIFO in the
    # test's folders). Both masquerade the pool toward the site.

Checked: gateway 1 takes the VIP; `add-client` writes it as the clients' Endpoint; wireguard-go
(`wg setconf`) and our client log in through gateway 1 (login is on: without a session a client
reaches only the login page), then ping the site and download from it (reconnecting at the
application level). Gateway 1 SIGKILLed (daemon and keepalived at once: a dead machine) and
`tunnel down` (systemd's ExecStopPost) -> the VIP moves to gateway 2, both clients' pings resume
within a few seconds of the move (printed: gateway 2 admits the sessions made on gateway 1, from
the registry) and the downloads complete with the right SHA-256;
gateway 1 back with the higher priority takes the VIP back and the clients resume again; VRRP
cut between the two -> both hold the VIP and each logs the split brain; healed -> gateway 2
steps back, gateway 1 handshakes its peers again and the clients resume; gateway 1 stopped
cleanly -> its keepalived is gone, the VIP moves to gateway 2 at once and the clients resume;
gateway 2 stopped cleanly -> its keepalived is gone and the VIP released. `tunnel server
show --json`, the metrics and the registry's rows say who is master.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from tests.helpers.netns import Netns, wireguard_go
from tests.helpers.pinglog import PingLog
from tests.helpers.server import ServerProc, http_login
from tests.helpers.tunnelproc import ResumableDownload, start_tunnel, write_config
from tunnel.config import parse_config
from tunnel.show import status

pytestmark = pytest.mark.netns

VIP, PREFIX = "10.70.0.100", 24
SITE = "10.60.0.100"
POOL = "10.8.0.0/24"
PORT = 51820
METRICS = "127.0.0.1:9586"
RESUME_BOUND = 6.0  # seconds after the VIP moved; a stock client alone takes ~15 (measured ~0.1-0.5: printed)


class Net:
    def __init__(self, topo, tmp_path):
        self.topo, self.tmp = topo, tmp_path
        ns = {n: topo.netns(n) for n in ("r", "c1", "c2", "g1", "g2", "s")}
        self.r, self.c1, self.c2, self.g1, self.g2, self.s = (ns[n] for n in ("r", "c1", "c2", "g1", "g2", "s"))
        for i, c in ((1, self.c1), (2, self.c2)):
            c.link_veth(self.r, f"10.40.{i}.2/24", f"10.40.{i}.1/24")
            c.route("default", "via", f"10.40.{i}.1")
        self.r.run(["ip", "link", "add", "name", "lan", "type", "bridge"])
        self.r.link_up("lan")
        self.r.addr("lan", "10.70.0.254/24")
        self.r.enable_forwarding()
        self.s.run(["ip", "link", "add", "name", "site", "type", "bridge"])
        self.s.link_up("site")
        self.s.addr("site", f"{SITE}/24")
        for i, g in ((1, self.g1), (2, self.g2)):
            _, lan_port = g.link_veth(self.r, f"10.70.0.{i}/24")
            self.r.run(["ip", "link", "set", lan_port, "master", "lan"])
            g.route("10.40.0.0/16", "via", "10.70.0.254")
            _, site_port = g.link_veth(self.s, f"10.60.0.{i}/24")
            self.s.run(["ip", "link", "set", site_port, "master", "site"])
        (tmp_path / "gw1").mkdir()
        (tmp_path / "gw2").mkdir()
        self.gw1 = ServerProc(self.g1, str(tmp_path / "gw1"), topo.unique_ifname("haa"))
        self.gw2 = ServerProc(self.g2, str(tmp_path / "gw2"), topo.unique_ifname("hab"))
        self.dev = {self.gw1: "g1-r", self.gw2: "g2-r"}

    def holds_vip(self, gw: ServerProc) -> bool:
        return any(a.get("local") == VIP for link in gw.ns.ip_json("addr", "show", "dev", self.dev[gw])
                   for a in link.get("addr_info", []))

    def wait_move(self, to: ServerProc, timeout: float = 30) -> float:
        """Until the VIP is on TO's device; the wall time it was first seen there (polled every 20 ms)."""
        Netns.wait_for(lambda: self.holds_vip(to), timeout, interval=0.02, what=f"the VIP on {to.ifname}")
        return time.time()


def _ha(gw: ServerProc) -> dict:
    res = gw.cli("show", "--json")
    return json.loads(res.stdout)


def _state(gw: ServerProc) -> str | None:
    """The daemon's HA state, from its control socket (what `tunnel show` reads; `show --json` is checked once)."""
    return status(gw.ifname)["extra"]["ha"]["state"]


def _keepalived_of(gw: ServerProc) -> list[int]:
    """Processes running with this gateway's keepalived config file."""
    conf = os.path.join(gw.dir, f"{gw.ifname}.ha", "keepalived.conf").encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if conf in f.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def _metrics(ns: Netns) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=5).read().decode())"
    return ns.python(code).stdout


def _wireguard_go(net: Net, text: str):
    """The stock client: wireguard-go configured with `wg setconf` from add-client's file."""
    config = parse_config(text)
    ifname = net.topo.unique_ifname("hac")
    from tunnel.protocol.crypto import encode_key

    wg = wireguard_go(net.c1, ifname, encode_key(config.interface.private_key), 0,
                      address=[str(a) for a in config.interface.addresses])
    path = write_config(str(net.tmp / "c1"), ifname, config.strip_wg_quick().to_text())
    net.c1.run(["wg", "setconf", ifname, path])
    for network in config.peers[0].allowed_networks():  # as wg-quick would
        net.c1.run(["ip", "route", "replace", str(network), "dev", ifname])
    return wg


def _resumed(pings: dict[str, PingLog], since: float) -> dict[str, float]:
    """Seconds from SINCE (the VIP moved) to each client's first ping reply after it."""
    return {name: round(pl.wait_reply_after(since, RESUME_BOUND), 2) for name, pl in pings.items()}


def _outage(pings: dict[str, PingLog], start: float) -> dict[str, float]:
    """Each client's longest time without a reply from START until now (pings every 0.1 s)."""
    time.sleep(0.5)  # a few replies after the first one
    return {name: round(pl.longest_gap(start, time.time()), 2) for name, pl in pings.items()}


def test_the_vip_moves_and_stock_and_our_clients_follow(netns_factory, tmp_path, pg_server):
    net = Net(netns_factory("ha"), tmp_path)
    gw1, gw2 = net.gw1, net.gw2
    url = pg_server.create_database()
    gw1.cli("init", "--endpoint", "vpn.example.com", "--registry", url, "--name", "gw1", "--pool", POOL,
            "--split", "--site", "10.60.0.0/24", "--metrics", METRICS)
    gw2.cli("join", "--registry", url, "--name", "gw2", "--metrics", METRICS)
    gw1.cli("auth", "local")  # login on: a client reaches the site only with a session, which the registry holds
    for user in ("alice", "bob"):
        gw1.add_user(user, f"{user}'s password")
    gw1.cli("ha", "--vip", f"{VIP}/{PREFIX}", "--dev", "g1-r", "--priority", "150")
    gw2.cli("ha", "--vip", f"{VIP}/{PREFIX}", "--dev", "g2-r")
    gw1.up()
    net.wait_move(gw1)
    gw2.up()
    Netns.wait_for(lambda: _state(gw1) == "master" and _state(gw2) == "backup", 20, what="gw1 master, gw2 backup")

    alice = gw1.add_client("alice")
    bob = gw2.add_client("bob")
    for text in (alice, bob):
        assert f"Endpoint = {VIP}:{PORT}\n" in text and "FailoverEndpoints" not in text
    stock = _wireguard_go(net, alice)
    ours = start_tunnel(net.c2, str(tmp_path), bob, ifname=net.topo.unique_ifname("had"))
    ours.wait_up()
    for ns, user in ((net.c1, "alice"), (net.c2, "bob")):  # through gateway 1
        answer = http_login(ns, {"user": user, "password": f"{user}'s password"})
        assert answer.get("ok"), answer
    pings = {"wireguard-go": PingLog.start(net.c1, SITE, str(tmp_path / "c1.ping")),
             "ours": PingLog.start(net.c2, SITE, str(tmp_path / "c2.ping"))}
    for pl in pings.values():
        Netns.wait_for(pl.replies, 20, interval=0.1, what="a first ping reply through gateway 1")
    show = _ha(gw1)
    assert show["ha"] == {"vip": f"{VIP}/{PREFIX}", "vrid": 1 + int.from_bytes(bytes([10, 70, 0, 100]), "big") % 255}
    assert show["clients_dial"] == f"{VIP}:{PORT}"
    assert {g["name"]: g["ha_state"] for g in show["gateways"]} == {"gw1": "master", "gw2": "backup"}
    assert f'tunnel_ha_state{{interface="{gw1.ifname}",state="master",vip="{VIP}/{PREFIX}"}} 1.0' in _metrics(net.g1)

    downloads = [ResumableDownload(net.s, net.c1, SITE, 8080, size=3 << 19, rate=150_000).start(),
                 ResumableDownload(net.s, net.c2, SITE, 8081, size=3 << 19, rate=150_000, seed=8).start()]
    Netns.wait_for(lambda: int(gw1.wg_dump()[_pub(alice)][6]) > 200_000, 30, what="downloads via gateway 1")

    # Gateway 1 dies (daemon and keepalived at once); systemd would run `tunnel down` after it.
    killed = time.time()
    gw1.stop(signal.SIGKILL)
    assert gw1.down().returncode == 0
    assert not net.holds_vip(gw1) and not _keepalived_of(gw1)
    moved = net.wait_move(gw2)
    first = _resumed(pings, moved)
    print(f"\ngateway 1 killed: VIP on gateway 2 {moved - killed:.2f} s later; first ping replies "
          f"{first} s after the move; outage {_outage(pings, killed - 1)} s")
    for d in downloads:
        size, intact, connections = d.wait()
        assert (size, intact) == (3 << 19, True), (size, intact, connections)
    assert _state(gw2) == "master" and "MASTER of 10.70.0.100/24: handshaking with 2 peer(s)" in gw2.log()

    # Gateway 1 back with the higher priority: it takes the VIP back.
    started = time.time()
    gw1.up()
    moved = net.wait_move(gw1)
    back = _resumed(pings, moved)
    print(f"gateway 1 back: first ping replies {back} s after the VIP moved back; outage {_outage(pings, started)} s")
    Netns.wait_for(lambda: _state(gw2) == "backup", 10, what="gateway 2 backup again")

    # VRRP cut between them: gateway 2 hears nothing and takes the VIP too.
    net.g2.run("nft add table inet habreak; nft add chain inet habreak in '{ type filter hook input priority -300; }';"
               " nft add rule inet habreak in ip protocol vrrp drop")
    for gw, other in ((gw1, "gw2"), (gw2, "gw1")):
        Netns.wait_for(lambda: f"split brain: gateway {other} holds" in gw.log(), 20, what=f"{gw.ifname} split")
    net.g2.run(["nft", "delete", "table", "inet", "habreak"])
    unblocked = time.time()
    Netns.wait_for(lambda: "split brain over: gateway gw2 no longer claims" in gw1.log(), 20, what="healed")
    healed = time.time()
    assert _state(gw1) == "master" and _state(gw2) == "backup" and net.holds_vip(gw1) and not net.holds_vip(gw2)
    after = {name: round(pl.wait_reply_after(healed, 15), 2) for name, pl in pings.items()}
    print(f"split brain healed: first ping replies {after} s after gateway 1 saw it end; outage from the "
          f"network's repair {_outage(pings, unblocked)} s")

    # Clean stops: keepalived goes with each daemon, and the VIP with the one holding it, at once
    # (keepalived's last advert has priority 0: the other takes over without waiting 3 of them).
    stopped = time.time()
    assert gw1.stop() == 0
    assert not _keepalived_of(gw1) and not net.holds_vip(gw1)
    moved = net.wait_move(gw2)
    handed = _resumed(pings, moved)
    print(f"gateway 1 stopped cleanly: first ping replies {handed} s after the VIP was seen on gateway 2; "
          f"outage {_outage(pings, stopped)} s")
    assert _state(gw2) == "master"
    assert gw2.stop() == 0
    assert not _keepalived_of(gw2) and not net.holds_vip(gw2)
    assert [p["endpoint"] for p in stock.dump()] == [f"{VIP}:{PORT}"]  # every reply came from the VIP
    assert ours.stop() == 0
    stock.stop()
    rows = {g["name"]: g["ha_state"] for g in json.loads(gw1.cli("show", "--json").stdout)["gateways"]}
    assert rows == {"gw1": "stopped", "gw2": "stopped"}


def _pub(config_text: str) -> str:
    from tunnel.protocol.crypto import encode_key

    return encode_key(parse_config(config_text).interface.public_key)
