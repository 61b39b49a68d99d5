"""Stock wg-quick (Debian's wireguard-tools) bringing up a full tunnel with `tunnel-wg` as its userspace WireGuard.

    +------------------ [c] client ------------------+        +------------ [s] server ------------+
    | wg-quick up IFACE.conf (full tunnel: 0.0.0.0/0,|        | wireguard-go :51820                |
    |   ::/0) -> tunnel-wg IFACE, wg setconf, ip ... |        |   10.32.0.2/24  fd32::2/64         |
    |   10.32.0.1/24  fd32::1/64                     |        |   lo: 10.99.0.1  fd99::1 (beyond)  |
    | c-s 10.31.0.1/24 fd31::1/64 -------------------+--------+---- s-c 10.31.0.2/24 fd31::2/64    |
    +------------------------------------------------+        +------------------------------------+

wg-quick runs `$WG_QUICK_USERSPACE_IMPLEMENTATION IFACE` when `ip link add
type wireguard` fails, then `wg setconf`, `ip address`, `ip link set mtu up`,
`wg set fwmark`, the policy rules and routes and an nftables table, and
`sysctl src_valid_mark`. So that the userspace path is what runs even on a
kernel that has WireGuard, `ip` is wrapped to refuse that one `link add` (and
/sys/module/wireguard, if present, is hidden in wg-quick's own mount
namespace, so that wg-quick falls back instead of giving up).

What the test shows: wg-quick up exits 0 with our daemon running; pings over
IPv4 and IPv6 inside the tunnel; addresses only the full tunnel routes (the
server's lo addresses, in no route of the client's but the tunnel's default)
answer; `wg show` has a handshake; wg-quick down exits 0, the daemon and its
socket are gone, and the client's addresses, routes, rules and nftables
ruleset are as before.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.dropin import daemon_pids, program
from tests.helpers.netns import WG_SOCKET_DIR, Netns, WgPeer, genkey, wireguard_go
from tests.helpers.tunnelproc import ping, wait_ping, write_config

pytestmark = pytest.mark.netns

PORT = 51820


def _wg_quick(c: Netns, workdir: str, verb: str, config: str) -> None:
    """`wg-quick VERB CONFIG` in C, with tunnel-wg as its userspace implementation."""
    wrappers = os.path.join(workdir, "bin")
    os.makedirs(wrappers, exist_ok=True)
    real_ip = shutil.which("ip")
    with open(os.path.join(wrappers, "ip"), "w") as f:
        f.write("#!/bin/sh\n# The kernel's WireGuard is not what this test is about.\n"
                "case \" $* \" in *\" type wireguard \"*) echo 'Error: Unknown device type.' >&2; exit 2;; esac\n"
                f"exec {real_ip} \"$@\"\n")
    os.chmod(os.path.join(wrappers, "ip"), 0o755)
    hide = "mount -t tmpfs none /sys/module/wireguard; " if os.path.isdir("/sys/module/wireguard") else ""
    env = dict(os.environ, PATH=f"{wrappers}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
               WG_QUICK_USERSPACE_IMPLEMENTATION=program(workdir))
    res = c.run(["sh", "-c", f'{hide}exec wg-quick "$0" "$1"', verb, config], check=False, env=env, timeout=60)
    assert res.returncode == 0, f"wg-quick {verb} exited {res.returncode}:\n{res.stdout}{res.stderr}"


def test_stock_wg_quick_full_tunnel_up_and_down(netns_factory, tmp_path):
    topo = netns_factory("wdq")
    c, s = topo.netns("c"), topo.netns("s")
    c.link_veth(s, ["10.31.0.1/24", "fd31::1/64"], ["10.31.0.2/24", "fd31::2/64"])
    s.addr("lo", "10.99.0.1/32")
    s.addr("lo", "fd99::1/128")
    ck, sk = genkey(), genkey()
    wireguard_go(s, topo.unique_ifname("wdg"), sk[0], PORT, [WgPeer(ck[1], ["10.32.0.1/32", "fd32::1/128"])],
                 address=["10.32.0.2/24", "fd32::2/64"])
    ifname = topo.unique_ifname("wd")
    config = write_config(str(tmp_path / "conf"), ifname, "\n".join([
        "[Interface]", f"PrivateKey = {ck[0]}", "Address = 10.32.0.1/24, fd32::1/64", "",
        "[Peer]", f"PublicKey = {sk[1]}", "AllowedIPs = 0.0.0.0/0, ::/0", f"Endpoint = 10.31.0.2:{PORT}", ""]))
    c.wait_dad()
    before = c.state()

    _wg_quick(c, str(tmp_path), "up", config)
    assert daemon_pids(ifname), "wg-quick did not start tunnel-wg"
    assert os.path.exists(os.path.join(WG_SOCKET_DIR, f"{ifname}.sock"))
    wait_ping(c, "10.32.0.2")
    ping(c, "10.32.0.2")
    ping(c, "fd32::2")
    # Beyond the server: no route of the client's but the tunnel's default knows these.
    assert c.ip_json("route", "get", "10.99.0.1")[0]["dev"] == ifname
    assert c.ip_json("-6", "route", "get", "fd99::1")[0]["dev"] == ifname
    ping(c, "10.99.0.1")
    ping(c, "fd99::1")
    # The daemon's own UDP carries wg-quick's fwmark and so leaves by the main table.
    fwmark = c.run(["wg", "show", ifname, "fwmark"]).stdout.strip()
    assert fwmark not in ("", "off")
    assert c.ip_json("route", "get", "10.31.0.2", "mark", fwmark)[0]["dev"] == "c-s"
    handshake = c.run(["wg", "show", ifname, "latest-handshakes"]).stdout.split()
    assert len(handshake) == 2 and int(handshake[1]) > 0

    _wg_quick(c, str(tmp_path), "down", config)
    Netns.wait_for(lambda: not daemon_pids(ifname), 20, what=f"tunnel-wg {ifname} to exit")
    assert not os.path.exists(os.path.join(WG_SOCKET_DIR, f"{ifname}.sock"))
    assert c.state() == before
