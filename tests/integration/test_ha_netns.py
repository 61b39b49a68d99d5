r"""`tunnel server ha` on one gateway (SQLite registry), with a real keepalived, in namespaces.

    [g] gateway  g-f 10.72.0.1/24 ------------- f-g 10.72.0.9/24  [f] another VRRP router (keepalived,
                 VIP 10.72.0.100 when it holds it                     multicast, VRID 42, 10.72.0.50)

Checked: a malformed VIP, a VIP outside the device's subnets, a device that does not exist, no
keepalived on PATH (at `ha` and at `up`), a VRID the other router advertises: one line each, exit
status 1, no traceback, and for `up` nothing left (no link, no journal, no keepalived). With a free
VRID the gateway takes the VIP; its device down -> FAULT (and no VIP), up -> master again;
keepalived SIGKILLed -> the daemon starts it again and it takes the VIP back; the daemon SIGKILLed
alone -> keepalived follows it (it was told to
die with it) and the VIP is released without anyone's help; `tunnel down` then has nothing left to
do; a keepalived that outlived its daemon is stopped by `tunnel down` and its VIP removed; `ha off` gives the server file back its wildcard port and clients the server's endpoint.
The two-gateway fail-over with clients is tests/integration/test_ha_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.netns import Netns
from tests.helpers.server import ServerProc
from tests.helpers.tunnelproc import tunnel_env
from tunnel.show import status
from tunnel.undo import Journal

import server.ha.keepalived  # noqa: F401 - registers the journal's "keepalived" step

pytestmark = pytest.mark.netns

VIP = "10.72.0.100/24"
NO_KEEPALIVED_PATH = "/usr/local/bin:/usr/bin:/bin"  # Debian's keepalived is /usr/sbin/keepalived

FOREIGN = """global_defs {
    router_id foreign
}
vrrp_instance other {
    state MASTER
    interface f-g
    virtual_router_id 42
    priority 200
    advert_int 1
    virtual_ipaddress {
        10.72.0.50/24 dev f-g
    }
}
"""


def _one_line_failure(res, expected: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [f"tunnel: {expected}"], res.stderr


def _keepalived_of(srv: ServerProc) -> list[int]:
    conf = os.path.join(srv.dir, f"{srv.ifname}.ha", "keepalived.conf").encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if conf in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
    return found


def _server_file(srv: ServerProc) -> str:
    with open(os.path.join(srv.dir, f"{srv.ifname}.conf")) as f:
        return f.read()


def _state(srv: ServerProc) -> str | None:
    """The daemon's HA state, from its control socket (what `tunnel show` reads)."""
    return status(srv.ifname)["extra"]["ha"]["state"]


def _holds_vip(ns: Netns) -> bool:
    return any(a.get("local") == VIP.split("/")[0] for link in ns.ip_json("addr", "show", "dev", "g-f")
               for a in link.get("addr_info", []))


def test_bad_input_a_vrid_in_use_and_keepalived_dying_with_the_daemon(netns_factory, tmp_path):
    topo = netns_factory("hn")
    g, f = topo.netns("g"), topo.netns("f")
    g.link_veth(f, "10.72.0.1/24", "10.72.0.9/24")
    srv = ServerProc(g, str(tmp_path), topo.unique_ifname("hng"))
    srv.cli("init", "--endpoint", "vpn.example.com", "--pool", "10.8.0.0/24")

    _one_line_failure(srv.cli("ha", "--vip", "10.72.0.300/24", "--dev", "g-f", check=False),
                      "VIP '10.72.0.300/24' is not ADDRESS/PREFIX (e.g. 192.0.2.10/24)")
    _one_line_failure(srv.cli("ha", "--vip", "10.72.0.100", "--dev", "g-f", check=False),
                      "VIP '10.72.0.100': give it with the prefix of its subnet, e.g. 192.0.2.10/24")
    _one_line_failure(srv.cli("ha", "--vip", "10.99.0.100/24", "--dev", "g-f", check=False),
                      "VIP 10.99.0.100/24 is not in a subnet of g-f (10.72.0.1/24): clients could not reach it there")
    _one_line_failure(srv.cli("ha", "--vip", VIP, "--dev", "nosuch0", check=False),
                      "device 'nosuch0' does not exist here")
    env = dict(tunnel_env(srv.state), PATH=NO_KEEPALIVED_PATH)
    argv = [sys.executable, "-m", "tunnel", "server", "ha", "--vip", VIP, "--dev", "g-f", "--dir", srv.dir,
            "-i", srv.ifname]
    _one_line_failure(g.run(argv, check=False, env=env),
                      "high availability needs keepalived, which is not installed here (apt-get install keepalived)")

    conf = tmp_path / "foreign.conf"
    conf.write_text(FOREIGN)
    pids = [str(tmp_path / f"foreign.{n}.pid") for n in ("main", "vrrp", "checkers")]
    with open(tmp_path / "foreign.log", "wb") as out:
        f.popen(["keepalived", "-f", str(conf), "-p", pids[0], "-r", pids[1], "-c", pids[2], "--vrrp",
                 "--dont-fork", "--log-console", "--no-syslog"], stdout=out, stderr=subprocess.STDOUT)
    Netns.wait_for(lambda: "10.72.0.50" in f.ip("addr", "show", "dev", "f-g"), 10, what="the other router up")
    _one_line_failure(srv.cli("ha", "--vip", VIP, "--dev", "g-f", "--vrid", "42", check=False),
                      "VRID 42 is in use on g-f: 10.72.0.9 advertises it for 10.72.0.50; choose another with --vrid")
    assert "ListenAddress" not in _server_file(srv)  # nothing was written
    srv.cli("ha", "--vip", VIP, "--dev", "g-f", "--vrid", "43")
    assert f"ListenAddress = {VIP.split('/')[0]}\n" in _server_file(srv)

    # `up` without keepalived: one line, and nothing of the interface was made.
    up = [sys.executable, "-m", "tunnel", "server", "up", "--dir", srv.dir, "-i", srv.ifname]
    _one_line_failure(g.run(up, check=False, env=env, timeout=60),
                      f"{srv.ifname}: high availability needs keepalived, which is not installed here "
                      "(apt-get install keepalived)")
    assert g.run(["ip", "link", "show", srv.ifname], check=False).returncode != 0
    assert not os.path.exists(os.path.join(srv.state, f"{srv.ifname}.json")) and not _keepalived_of(srv)

    srv.up()
    Netns.wait_for(lambda: _holds_vip(g), 20, what="the VIP on the only gateway")
    assert _state(srv) == "master"
    g.run(["ip", "link", "set", "g-f", "down"])  # keepalived's FAULT: the daemon hears it from the FIFO
    Netns.wait_for(lambda: _state(srv) == "fault", 10, what="FAULT with the device down")
    assert not _holds_vip(g)
    g.run(["ip", "link", "set", "g-f", "up"])
    Netns.wait_for(lambda: _holds_vip(g) and _state(srv) == "master", 20, what="master again with the device up")
    with open(os.path.join(srv.dir, f"{srv.ifname}.ha", "keepalived.pid")) as f:
        os.kill(int(f.read()), signal.SIGKILL)  # keepalived dies alone: the daemon starts it again
    Netns.wait_for(lambda: "keepalived exited with status -9: starting it again in 2 s" in srv.log(), 10,
                   what="the daemon noticing")
    Netns.wait_for(lambda: _holds_vip(g) and _state(srv) == "master", 20, what="master again after the restart")
    assert len(_keepalived_of(srv)) == 2  # its parent and its VRRP child
    os.kill(srv.proc.pid, signal.SIGKILL)  # the daemon alone: keepalived was not killed
    Netns.wait_for(lambda: not _keepalived_of(srv) and not _holds_vip(g), 15,
                   what="keepalived gone with its daemon, the VIP released")
    res = srv.down()
    assert res.returncode == 0, res.stderr

    # A keepalived that outlived its daemon (started by hand here, so no death signal ties it to one):
    # the journal's step is what `tunnel down` undoes, and it stops it and takes the VIP away.
    ha_dir = os.path.join(srv.dir, f"{srv.ifname}.ha")
    conf = os.path.join(ha_dir, "keepalived.conf")
    pidfiles = [os.path.join(ha_dir, n) for n in ("keepalived.pid", "vrrp.pid", "checkers.pid")]
    with open(tmp_path / "orphan.log", "wb") as out:
        g.popen(["keepalived", "--use-file", conf, "--pid", pidfiles[0], "--vrrp_pid", pidfiles[1], "--checkers_pid",
                 pidfiles[2], "--vrrp", "--dont-fork", "--log-console", "--no-syslog"], stdout=out,
                stderr=subprocess.STDOUT)
    Netns.wait_for(lambda: _holds_vip(g), 20, what="the VIP held by the orphan keepalived")
    with g.entered():  # a journal is undone only in the namespace it was written in
        Journal.for_interface(srv.ifname, srv.state).record("keepalived", conf=conf, pidfile=pidfiles[0],
                                                            dev="g-f", vip=VIP)
    res = srv.down()
    assert res.returncode == 0, res.stderr
    assert not _keepalived_of(srv) and not _holds_vip(g)

    srv.cli("ha", "off")
    assert "ListenAddress" not in _server_file(srv)
    client = srv.cli("add-client", "alice", "--no-qr").stdout
    assert "Endpoint = vpn.example.com:51820" in client
    name = json.loads(srv.cli("show", "--json").stdout)["gateway"]
    _one_line_failure(srv.cli("ha", "off", check=False), f"high availability is not on for gateway {name}")
