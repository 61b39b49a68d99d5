"""`tunnel-wg` as a command: its options, its environment, and what it says when it cannot start.

A failure to start is one line on stderr and a non-zero status, and leaves
nothing behind: no link, no socket file, no process.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.dropin import daemon_pids, program, start_dropin
from tests.helpers.netns import WG_SOCKET_DIR, Netns

pytestmark = pytest.mark.netns


def _fails(ns: Netns, workdir: str, ifname: str, *, prefix: str = "exec ", env=None) -> str:
    """Run tunnel-wg IFNAME in NS (after the shell words PREFIX); assert it failed in one line; return the line."""
    res = ns.run(["sh", "-c", f'{prefix}"$0" "$1"', program(workdir), ifname], check=False, env=env, timeout=30)
    assert res.returncode != 0, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunnel-wg: ") and "Traceback" not in res.stderr, res.stderr
    assert res.stdout == ""
    return lines[0]


def _nothing_left(ns: Netns, ifname: str) -> None:
    assert ns.run(["ip", "link", "show", "dev", ifname], check=False).returncode != 0
    assert not os.path.exists(os.path.join(WG_SOCKET_DIR, f"{ifname}.sock"))
    assert not daemon_pids(ifname)


def test_help_and_version(netns_factory, tmp_path):
    ns = netns_factory("wdc").netns("n")
    res = ns.run([program(str(tmp_path)), "--help"])
    assert "Usage: tunnel-wg [OPTIONS] INTERFACE" in res.stdout and "--foreground" in res.stdout
    assert ns.run([program(str(tmp_path)), "--version"]).stdout.startswith("tunnel-wg, version ")


def test_bad_starts_say_why_in_one_line_and_leave_nothing(netns_factory, tmp_path):
    topo = netns_factory("wdc")
    ns = topo.netns("n")
    work = str(tmp_path)
    assert "longer than 15 bytes" in _fails(ns, work, "abcdefghijklmnop")
    assert "not valid" in _fails(ns, work, "a/b")
    assert ns.ip_json("link", "show") and not daemon_pids("abcdefghijklmnop")
    # A name taken by a link of another kind: refused, and that link left alone.
    ns.ip("link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
    assert "taken0 already exists" in _fails(ns, work, "taken0")
    assert ns.ip_json("link", "show", "dev", "taken0")[0]["ifname"] == "taken0"
    assert not os.path.exists(os.path.join(WG_SOCKET_DIR, "taken0.sock")) and not daemon_pids("taken0")
    # Without CAP_NET_ADMIN (an unprivileged user): no TUN device.
    nobody = "exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "
    ifname = topo.unique_ifname("wd")
    line = _fails(ns, work, ifname, prefix=nobody, env=dict(os.environ, HOME="/"))
    assert "permission denied (a TUN device needs root or CAP_NET_ADMIN)" in line, line
    _nothing_left(ns, ifname)
    # The socket directory cannot be written (a read-only /run, as a hardened unit may have).
    os.makedirs(WG_SOCKET_DIR, exist_ok=True)
    ifname = topo.unique_ifname("wd")
    line = _fails(ns, work, ifname, prefix=f"mount -t tmpfs -o ro none {WG_SOCKET_DIR} && exec ")
    assert f"{ifname}.sock" in line and "Read-only file system" in line, line
    _nothing_left(ns, ifname)
    # The name is served already, from another namespace (the socket directory is shared).
    other = topo.netns("m")
    served = start_dropin(other, work)
    line = _fails(ns, work, served.ifname)
    assert "in use" in line, line
    assert ns.run(["ip", "link", "show", "dev", served.ifname], check=False).returncode != 0
    assert served.alive() and os.path.exists(served.socket_path) and len(daemon_pids(served.ifname)) == 1


def test_foreground_and_log_level(netns_factory, tmp_path):
    """-f (or WG_PROCESS_FOREGROUND=1) stays; LOG_LEVEL=verbose logs, silent does not; SIGTERM ends it."""
    topo = netns_factory("wdc")
    ns = topo.netns("n")
    for args, env in ((["-f"], {"LOG_LEVEL": "verbose"}), ([], {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "silent"})):
        ifname = topo.unique_ifname("wd")
        log = tmp_path / f"{ifname}.log"
        with open(log, "wb") as out:
            proc = ns.popen([program(str(tmp_path)), *args, ifname], stdout=out, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **env))
        sock = os.path.join(WG_SOCKET_DIR, f"{ifname}.sock")
        Netns.wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, what=f"{sock}")
        assert proc.poll() is None  # still there: it did not detach
        ns.run(["wg", "set", ifname, "listen-port", "0"])
        proc.terminate()
        assert proc.wait(20) == 0
        assert not os.path.exists(sock)
        assert ns.run(["ip", "link", "show", "dev", ifname], check=False).returncode != 0
        text = log.read_text()
        if env["LOG_LEVEL"] == "verbose":
            assert f"{ifname}: listening on UDP port" in text and f"{ifname}: stopping" in text, text
        else:
            assert text == "", text
