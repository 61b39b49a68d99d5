"""tunnel/netconfig.py for real in a namespace, and the namespace harness itself.

Topology for the netconfig tests: one namespace, one persistent TUN link.

    [cfg]  tunX  (10.70.0.2/24, fd70::2/64, mtu 1420)

The check that matters: after `undo_all` (run twice, and run by a fresh
process after a crash) the namespace's addresses, links and routes of every
table equal a snapshot taken before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest
from pyroute2 import IPRoute

from tests.helpers.netns import NETNS_RUN_DIR, WG_SOCKET_DIR, WgPeer, genkey, topology, wireguard_go
from tunnel import netconfig
from tunnel.undo import Journal

pytestmark = pytest.mark.netns

ADDRESSES = ["10.70.0.2/24", "fd70::2/64"]
POLICY_TABLE = 51820


def make_tun(ifname: str) -> None:
    """A persistent TUN link in the current namespace (tunnel/tun.py's job in production)."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="tuntap", mode="tun")


def routes_on(ns, ifname: str, family: str) -> set[tuple[str, str]]:
    """(dst, table) of the non-kernel routes through `ifname`, every table."""
    found = set()
    for r in ns.ip_json(family, "route", "show", "table", "all"):
        if r.get("dev") == ifname and r.get("protocol") != "kernel" and r.get("type", "unicast") == "unicast":
            found.add((r["dst"], str(r.get("table", "main"))))
    return found


def configure(journal: Journal, ifname: str) -> list[str]:
    netconfig.set_up(journal, ifname, ADDRESSES, 1420)
    defaults, others = netconfig.split_default_routes(
        ["10.70.0.0/24", "10.70.0.9/32", "10.71.0.0/16", "fd71::/64", "10.72.0.1/24", "0.0.0.0/0", "::/0"]
    )
    assert defaults == ["0.0.0.0/0", "::/0"]
    added = netconfig.add_routes(journal, ifname, others)
    netconfig.add_routes(journal, ifname, defaults, table=POLICY_TABLE)
    return added


@pytest.mark.parametrize("own_link", [True, False], ids=["journal-owns-link", "link-made-elsewhere"])
def test_set_up_add_routes_and_undo_twice(netns_factory, tmp_path, own_link):
    topo = netns_factory("nc")
    ns = topo.netns("cfg")
    ifname = topo.unique_ifname("tun")
    journal = Journal.open(str(tmp_path / f"{ifname}.json"))
    with ns.entered():
        if own_link:
            before = ns.snapshot()
            journal.record("link", ifname=ifname)
            make_tun(ifname)
        else:
            # Only the addresses/MTU/state/routes are ours: their undos alone must restore this.
            make_tun(ifname)
            before = ns.snapshot()
        added = configure(journal, ifname)

    # Routes already covered by the address's prefix route are skipped, host bits masked.
    assert added == ["10.71.0.0/16", "fd71::/64", "10.72.0.0/24"]
    (link,) = ns.ip_json("addr", "show", "dev", ifname)
    assert link["mtu"] == 1420 and "UP" in link["flags"]
    got = {(a["local"], a["prefixlen"], bool(a.get("nodad"))) for a in link["addr_info"]}
    assert got == {("10.70.0.2", 24, False), ("fd70::2", 64, True)}
    assert routes_on(ns, ifname, "-4") == {("10.71.0.0/16", "main"), ("10.72.0.0/24", "main"),
                                           ("default", str(POLICY_TABLE))}
    assert routes_on(ns, ifname, "-6") == {("fd71::/64", "main"), ("default", str(POLICY_TABLE))}
    assert not netconfig.link_exists(ifname)  # nothing leaked into the host namespace

    steps = [dict(s) for s in journal.steps]
    with ns.entered():
        assert journal.undo_all() == []
        assert ns.snapshot() == before
        # The same steps again, as `tunnel down` after `tunnel up` had already cleaned up.
        assert Journal(journal.path, steps).undo_all() == []
        assert journal.undo_all() == []
    assert ns.snapshot() == before
    assert not os.path.exists(journal.path)


def test_thousands_of_routes_go_in_one_journal_step_and_come_out_whole(netns_factory, tmp_path):
    """10,000-peer servers (issue 9, item 14): coverage computed once, one journal step, batched netlink."""
    topo = netns_factory("hdnc")
    ns = topo.netns("many")
    ifname = topo.unique_ifname("tun")
    journal = Journal.open(str(tmp_path / f"{ifname}.json"))
    inside = [f"10.70.{i // 250}.{i % 250 + 1}/32" for i in range(1, 1000)]  # under the address's 10.70.0.0/16
    outside = [f"10.{100 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}/32" for i in range(2500)]
    outside6 = [f"fd71::{i:x}/128" for i in range(1, 500)]
    with ns.entered():
        make_tun(ifname)
        before = ns.snapshot()
        netconfig.set_up(journal, ifname, ["10.70.0.2/16", "fd70::2/64"], 1420)
        steps = len(journal.steps)
        added = netconfig.add_routes(journal, ifname, inside + outside + outside6 + outside[:10])
        assert added == outside + outside6  # the covered and the repeated ones skipped
        assert [s["kind"] for s in journal.steps[steps:]] == ["routes"]
        # Already there and ours (a second run over a kept link): not an error, nothing new to undo.
        assert netconfig.add_routes(journal, ifname, outside[:5] + ["10.99.0.0/24"]) == ["10.99.0.0/24"]
    got4 = {dst for dst, table in routes_on(ns, ifname, "-4") if table == "main"}
    assert got4 == {r.removesuffix("/32") for r in outside} | {"10.99.0.0/24"}
    assert {dst for dst, _ in routes_on(ns, ifname, "-6")} == {r.removesuffix("/128") for r in outside6}
    with ns.entered():
        assert journal.undo_all() == []
        assert ns.snapshot() == before


def test_add_routes_refuses_default_without_table(netns_factory, tmp_path):
    ns = netns_factory("nc").netns("def")
    journal = Journal.open(str(tmp_path / "j.json"))
    with ns.entered():
        journal.record("link", ifname="t0")
        make_tun("t0")
        with pytest.raises(ValueError):
            netconfig.add_routes(journal, "t0", ["10.1.0.0/16", "0.0.0.0/0"])
        with pytest.raises(netconfig.NetconfigError):
            netconfig.set_up(journal, "missing0", ["10.1.0.1/24"], 1420)
        assert journal.undo_all() == []


def test_route_conflict_leaves_the_other_route_alone(netns_factory, tmp_path):
    """A network already routed through another link: we fail, and our undo must not delete theirs."""
    topo = netns_factory("nc")
    a, b = topo.netns("a"), topo.netns("b")
    a.link_veth(b, "10.80.0.1/24", "10.80.0.2/24")
    a.route("10.81.0.0/16", "via", "10.80.0.2")
    journal = Journal.open(str(tmp_path / "j.json"))
    with a.entered():
        make_tun("t0")
        before = a.snapshot()
        with pytest.raises(netconfig.NetconfigError):
            netconfig.add_routes(journal, "t0", ["10.81.0.0/16"])
        assert journal.undo_all() == []
        assert a.snapshot() == before


def test_route_get_and_link_mtu(netns_factory):
    topo = netns_factory("nc")
    a, b = topo.netns("a"), topo.netns("b")
    a_if, _ = a.link_veth(b, ["10.90.0.1/24", "fd90::1/64"], ["10.90.0.2/24", "fd90::2/64"], mtu=1400)
    a.route("10.91.0.0/16", "via", "10.90.0.2")
    a.route("10.92.0.0/16", "via", "10.90.0.2", "mtu", "1300")
    with a.entered():
        assert netconfig.link_mtu(a_if) == 1400
        assert netconfig.route_get("10.90.0.2") == (a_if, None, "10.90.0.1", 1400)
        assert netconfig.route_get("10.91.3.4") == (a_if, "10.90.0.2", "10.90.0.1", 1400)
        assert netconfig.route_get("10.92.3.4").mtu == 1300
        assert netconfig.route_get("fd90::2") == (a_if, None, "fd90::1", 1400)
        with pytest.raises(netconfig.NetconfigError):
            netconfig.route_get("192.0.2.1")  # no default route in a fresh namespace
        with pytest.raises(netconfig.NetconfigError):
            netconfig.link_mtu("missing0")


CRASHING_UP = textwrap.dedent(
    """
    import os, signal, sys
    from pyroute2 import IPRoute
    from tunnel import netconfig
    from tunnel.undo import Journal

    path, ifname = sys.argv[1], sys.argv[2]
    journal = Journal.open(path)
    journal.record("link", ifname=ifname)
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="tuntap", mode="tun")
    netconfig.set_up(journal, ifname, ["10.70.0.2/24", "fd70::2/64"], 1420)
    netconfig.add_routes(journal, ifname, ["10.71.0.0/16"])
    # Written down, never made: the crash comes between the two.
    journal.record("route", ifname=ifname, network="10.73.0.0/16", table=None, metric=None)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_new_process_undoes_a_journal_left_by_a_crash(netns_factory, tmp_path):
    topo = netns_factory("nc")
    ns = topo.netns("crash")
    ifname = topo.unique_ifname("tun")
    path = str(tmp_path / f"{ifname}.json")
    before = ns.snapshot()

    res = ns.python(CRASHING_UP, path, ifname, check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert ns.ip_json("link", "show", "dev", ifname)  # the half-done state is really there
    with open(path) as f:
        assert json.load(f)["steps"][-1]["params"]["network"] == "10.73.0.0/16"

    with ns.entered():
        journal = Journal.open(path)  # as `tunnel down` / the next `tunnel up` would
        assert journal.pending
        assert journal.undo_all() == []
    assert ns.snapshot() == before
    assert not os.path.exists(path)


# -- the harness itself --------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_everything(topo) -> tuple[list[str], list[int], list[str], list[str]]:
    """Two namespaces with a veth, a tracked process with a child, an untracked daemon, an /etc dir."""
    a, b = topo.netns("a"), topo.netns("b")
    names = a.link_veth(b, "10.60.0.1/24", "10.60.0.2/24")
    tracked = a.popen("sleep 600 & sleep 600; wait")  # a child in the same group
    a.run("setsid sleep 600 </dev/null >/dev/null 2>&1 &")  # escaped every group we know of
    etc = b.etc_dir()
    with open(os.path.join(etc, "resolv.conf"), "w") as f:
        f.write("nameserver 10.60.0.1\n")
    a.wait_for(lambda: len(a.pids()) >= 3, what="three sleeps")
    pids = a.pids() + [tracked.pid]
    return [a.name, b.name], pids, [etc], list(names)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_harness_cleans_up_even_when_the_body_raises(exc):
    with pytest.raises(exc):
        with topology("nc") as topo:
            namespaces, pids, etc_dirs, links = _start_everything(topo)
            assert all(len(n) <= 15 for n in links)
            # The resolv.conf shadows /etc inside the namespace.
            assert "10.60.0.1" in topo["b"].run(["cat", "/etc/resolv.conf"]).stdout
            raise exc("test body failed")
    for name in namespaces:
        assert not os.path.exists(os.path.join(NETNS_RUN_DIR, name))
    for path in etc_dirs:
        assert not os.path.exists(path)
    assert [p for p in pids if _alive(p)] == []
    host_links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    assert not any(link["ifname"] in links for link in json.loads(host_links))


def test_harness_names_are_unique_and_short():
    with topology("nc") as topo:
        a = topo.netns("a")
        assert a.name == f"nc{os.getpid() % 100000}-a"
        names = {topo.unique_ifname("wg") for _ in range(50)}
        assert len(names) == 50 and all(len(n) <= 15 for n in names)
        b = topo.netns("a-very-long-namespace-name")
        assert all(len(n) <= 15 for n in a.link_veth(b) + a.link_veth(b))


def test_wireguard_go_reference_peers_talk():
    #  [a] wgA 10.61.0.1 --- a-b 10.62.0.1 ==== 10.62.0.2 b-a --- wgB 10.61.0.2 [b]
    with topology("nc") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        a.link_veth(b, "10.62.0.1/24", "10.62.0.2/24")
        (ka, pa), (kb, pb) = genkey(), genkey()
        psk = genkey()[0]
        wa = wireguard_go(a, topo.unique_ifname(), ka, 51820,
                          [WgPeer(pb, ["10.61.0.2/32"], "10.62.0.2:51821", preshared_key=psk)],
                          address="10.61.0.1/24", mtu=1400)
        wb = wireguard_go(b, topo.unique_ifname(), kb, 51821,
                          [WgPeer(pa, ["10.61.0.1/32"], "10.62.0.1:51820", preshared_key=psk)],
                          address="10.61.0.2/24")
        b.run(["ping", "-c1", "-W5", "10.61.0.1"])
        (peer,) = wa.dump()
        assert peer["public_key"] == pb and peer["latest_handshake"] != "0"
        assert wa.public_key == pa
        assert a.ip_json("link", "show", wa.ifname)[0]["mtu"] == 1400
        sockets = [os.path.join(WG_SOCKET_DIR, f"{w.ifname}.sock") for w in (wa, wb)]
        assert all(os.path.exists(s) for s in sockets)
        procs = [wa.proc, wb.proc]
    assert [p.poll() is not None for p in procs] == [True, True]
    assert not any(os.path.exists(s) for s in sockets)
