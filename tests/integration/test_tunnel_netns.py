"""`tunnel up` on both ends, and the daemon facing bad input, in real namespaces.

    +------------- [c] client -------------+        +------------- [s] server -------------+
    | tunnel up ti<pid><n>.conf            |        | tunnel up ti<pid><n>.conf  :51820    |
    |   10.42.0.1/24  fd42::1/64           |        |   10.42.0.2/24  fd42::2/64           |
    | c-s 10.41.0.1/24 fd41::1/64 ---------+--------+--------- s-c 10.41.0.2/24 fd41::2/64 |
    +--------------------------------------+        +--------------------------------------+

Shown here: pings over IPv4 and IPv6 and 100 MB of TCP each way (SHA-256
equal on the far side) with our code at both ends; a wrong server key means
no handshake and no crash; an unsafe or missing config is refused in one
line with status 1; UDP garbage at the listening port changes nothing; after
SIGTERM nothing of ours is left, and after SIGKILL `tunnel down` puts the
namespace back as it was (links, addresses, routes, rules, nftables).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from dataclasses import dataclass

import pytest

from tests.helpers.tunnelproc import (
    TunnelProc,
    interface_config,
    ping,
    run_tunnel,
    start_tunnel,
    transfer,
    wait_ping,
)
from tests.helpers.netns import Netns, WgPeer, genkey

pytestmark = pytest.mark.netns

PORT = 51820
CLIENT_IN = ("10.42.0.1", "fd42::1")
SERVER_IN = ("10.42.0.2", "fd42::2")
ENDPOINT = {"v4": f"10.41.0.2:{PORT}", "v6": f"[fd41::2]:{PORT}"}
MB100 = 100 * 1000 * 1000


@dataclass
class Ends:
    client: Netns
    server: Netns
    tc: TunnelProc | None = None
    ts: TunnelProc | None = None


def make_ends(netns_factory) -> Ends:
    topo = netns_factory("ti")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.41.0.1/24", "fd41::1/64"], ["10.41.0.2/24", "fd41::2/64"])
    return Ends(c, s)


def start_both(ends: Ends, tmp_path, underlay: str = "v4", server_key_in_client: str | None = None,
               client_allowed: list[str] | None = None) -> None:
    ck, sk = genkey(), genkey()
    ends.ts = start_tunnel(ends.server, str(tmp_path), interface_config(
        sk[0], PORT, [f"{SERVER_IN[0]}/24", f"{SERVER_IN[1]}/64"],
        [WgPeer(ck[1], [f"{CLIENT_IN[0]}/32", f"{CLIENT_IN[1]}/128"])]))
    ends.ts.wait_up()
    allowed = client_allowed or [f"{SERVER_IN[0]}/32", f"{SERVER_IN[1]}/128"]
    ends.tc = start_tunnel(ends.client, str(tmp_path), interface_config(
        ck[0], None, [f"{CLIENT_IN[0]}/24", f"{CLIENT_IN[1]}/64"],
        [WgPeer(server_key_in_client or sk[1], allowed, endpoint=ENDPOINT[underlay])]))
    ends.tc.wait_up()


def stop_cleanly(tp: TunnelProc) -> None:
    """SIGTERM: status 0, no TUN device, state file or control socket left, no traceback."""
    assert tp.alive(), tp.log()
    assert tp.stop(signal.SIGTERM) == 0, tp.log()
    assert not tp.tun_exists(), tp.ns.ip("link")
    assert not os.path.exists(tp.state_file)
    assert not tp.control_socket_exists()
    assert "Traceback" not in tp.log(), tp.log()


# -- our code at both ends ------------------------------------------------------


@pytest.mark.parametrize("underlay", ["v4", "v6"])
def test_ours_both_ends_ping_and_100mb_each_way(netns_factory, tmp_path, underlay):
    ends = make_ends(netns_factory)
    start_both(ends, tmp_path, underlay)
    wait_ping(ends.client, SERVER_IN[0])
    for ns, targets in ((ends.client, SERVER_IN), (ends.server, CLIENT_IN)):
        for target in targets:
            ping(ns, target)
    up = transfer(ends.client, ends.server, SERVER_IN[1], 5001, MB100)
    up.assert_intact(MB100)
    down = transfer(ends.server, ends.client, CLIENT_IN[0], 5002, MB100)
    down.assert_intact(MB100)
    print(f"ours<->ours {underlay}: up {8 * MB100 / up.seconds / 1e6:.0f} Mbit/s, "
          f"down {8 * MB100 / down.seconds / 1e6:.0f} Mbit/s")
    stop_cleanly(ends.tc)
    stop_cleanly(ends.ts)


# -- bad input -------------------------------------------------------------------------


def test_wrong_server_key_means_no_handshake_and_no_crash(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    start_both(ends, tmp_path, server_key_in_client=genkey()[1])
    # Long enough for the client to retry its initiation (REKEY_TIMEOUT is 5 s).
    res = ends.client.run(["ping", "-c", "7", "-i", "1", "-W", "1", SERVER_IN[0]], check=False)
    assert res.returncode != 0 and " 0 received" in res.stdout, res.stdout
    assert "handshake completed" not in ends.tc.log() + ends.ts.log()
    stop_cleanly(ends.tc)
    stop_cleanly(ends.ts)


def test_config_readable_by_others_is_refused_in_one_line(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    state = str(tmp_path / "state")
    name = ends.server.topo.unique_ifname("ti")
    path = tmp_path / f"{name}.conf"
    path.write_text(interface_config(genkey()[0], PORT, ["10.42.0.2/24"], []))
    os.chmod(path, 0o644)
    res = run_tunnel(ends.server, state, "up", str(path))
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunnel: "), res.stderr
    assert "readable by others" in lines[0] and "chmod 600" in lines[0], lines[0]
    assert "PrivateKey" not in res.stderr and "Traceback" not in res.stderr
    assert ends.server.run(["ip", "link", "show", name], check=False).returncode != 0
    assert not os.path.exists(os.path.join(state, f"{name}.json"))


def test_missing_config_is_a_clear_error(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    name = ends.server.topo.unique_ifname("ti")
    path = str(tmp_path / "nowhere" / f"{name}.conf")
    res = run_tunnel(ends.server, str(tmp_path / "state"), "up", path)
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunnel: "), res.stderr
    assert path in lines[0] and "No such file" in lines[0], lines[0]
    assert ends.server.run(["ip", "link", "show", name], check=False).returncode != 0


def _garbage(rng: random.Random) -> list[bytes]:
    """Datagrams a peer must drop: random bytes, and each message type at its right size with random content."""
    out = [b"", b"\x01", b"\x04\x00\x00\x00"]
    out += [rng.randbytes(rng.randrange(1, 1600)) for _ in range(300)]
    for mtype, size in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 1452)):
        for _ in range(100):
            out.append(bytes([mtype, 0, 0, 0]) + rng.randbytes(size - 4))
    out.append(bytes([1, 0, 0, 0]) + bytes(144))  # all-zero initiation
    out.append(bytes([4, 0, 0, 0]) + b"\xff" * 60)  # transport to receiver 0xffffffff
    return out


def _spray(ns: Netns, host: str, port: int, datagrams: list[bytes]) -> None:
    with ns.entered():
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, (host, port))


def test_udp_garbage_at_the_listening_port_changes_nothing(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    start_both(ends, tmp_path)
    garbage = _garbage(random.Random(1234))
    # Before any session exists, then again during one, over both underlay families.
    _spray(ends.client, "10.41.0.2", PORT, garbage)
    wait_ping(ends.client, SERVER_IN[0])
    _spray(ends.client, "fd41::2", PORT, garbage)
    ping(ends.client, SERVER_IN[0])
    ping(ends.server, CLIENT_IN[1])
    transfer(ends.client, ends.server, SERVER_IN[0], 5003, 10 * 1000 * 1000).assert_intact()
    # The garbage did reach the daemon: it counted the drops (not all: a burst may overflow the socket).
    res = run_tunnel(ends.server, ends.ts.state_dir, "show", ends.ts.ifname, "--json")
    assert res.returncode == 0, res.stderr
    drops = json.loads(res.stdout)["counters"]["drops"]
    assert sum(drops.values()) - drops.get("no_route", 0) > 0, drops
    stop_cleanly(ends.tc)
    stop_cleanly(ends.ts)


# -- what is left after a stop or a crash --------------------------------------------


FULL_TUNNEL = ["0.0.0.0/0", "::/0"]


def test_sigterm_leaves_the_namespace_as_it_was(netns_factory, tmp_path):
    """A full-tunnel client (policy routing, kill switch, MSS clamp) stopped by SIGTERM undoes all of it."""
    ends = make_ends(netns_factory)
    ends.client.wait_dad()
    before = ends.client.state()
    start_both(ends, tmp_path, client_allowed=FULL_TUNNEL)
    wait_ping(ends.client, SERVER_IN[0])
    assert ends.client.state() != before
    stop_cleanly(ends.tc)
    assert ends.client.state() == before
    stop_cleanly(ends.ts)


def test_sigkill_then_tunnel_down_restores_the_namespace(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    ends.client.wait_dad()
    before = ends.client.state()
    start_both(ends, tmp_path, client_allowed=FULL_TUNNEL)
    wait_ping(ends.client, SERVER_IN[0])
    tc = ends.tc
    assert tc.stop(signal.SIGKILL) == -signal.SIGKILL
    # The TUN device dies with its process; the rest stays, written in the journal.
    ends.client.wait_for(lambda: not tc.tun_exists(), what="the TUN device to go with its process")
    assert os.path.exists(tc.state_file)
    assert ends.client.state() != before
    res = run_tunnel(ends.client, tc.state_dir, "down", tc.ifname)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert ends.client.state() == before
    assert not os.path.exists(tc.state_file)
    # Safe to run twice.
    res = run_tunnel(ends.client, tc.state_dir, "down", tc.ifname)
    assert res.returncode == 0, res.stderr
    assert ends.client.state() == before
    stop_cleanly(ends.ts)


def test_tunnel_down_removes_a_dead_control_socket(netns_factory, tmp_path):
    ends = make_ends(netns_factory)
    start_both(ends, tmp_path)
    tc = ends.tc
    assert tc.control_socket_exists()
    assert tc.stop(signal.SIGKILL) == -signal.SIGKILL
    res = run_tunnel(ends.client, tc.state_dir, "down", tc.ifname)
    assert res.returncode == 0, res.stderr
    assert not tc.control_socket_exists()
