"""The systemd units pass `systemd-analyze verify`, and READY=1 comes only once the interface is up.

The readiness test plays systemd's part: it binds an AF_UNIX datagram
socket, passes it as NOTIFY_SOCKET to `tunnel up` in a namespace, and when
READY=1 arrives checks at that moment that the interface, its address, its
route and the control socket exist.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers.tunnelproc import tunnel_env
from tests.helpers.netns import genkey
from tunnel import sdnotify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = ["tunnel@.service", "tunnel-server@.service"]


def _unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    with open(os.path.join(ROOT, "systemd", name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                k, _, v = line.partition("=")
                keys.setdefault(k, []).append(v)
    return keys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_units_verify(name, tmp_path):
    # verify insists that ExecStart's program exists: point it at this checkout's.
    program = os.path.join(os.path.dirname(sys.executable), "tunnel")
    if not os.path.exists(program):
        program = shutil.which("true")
    text = open(os.path.join(ROOT, "systemd", name)).read().replace("/usr/local/bin/tunnel", program)
    # An instance name stands in for %i.
    path = tmp_path / name.replace("@.", "@wg0.")
    path.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert name.split("@")[0] not in res.stderr, res.stderr  # no warning about our unit


@pytest.mark.parametrize("name", UNITS)
def test_units_are_notify_restart_and_hardened(name):
    keys = _unit(name)
    assert keys["Type"] == ["notify"]
    assert keys["Restart"] == ["on-failure"]
    # The server's keepalived (a virtual IP) needs raw sockets for VRRP and packet sockets for ARP.
    extra = {"CAP_NET_RAW"} if name == "tunnel-server@.service" else set()
    assert set(keys["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"} | extra
    assert keys["ProtectSystem"] == ["strict"]
    rw = keys["ReadWritePaths"][0].split()
    assert {"/run/tunnel", "/run/wireguard", "/etc/wireguard"} <= set(rw)
    assert keys["NoNewPrivileges"] == ["yes"]
    # Initiation timestamps come from the wall clock: start once it is synchronised where a sync service runs.
    assert "time-sync.target" in keys["After"][0].split()
    if name == "tunnel@.service":  # the endpoint file (tunnel/endpointstore.py) is in /var/lib/tunnel
        assert keys["StateDirectory"] == ["tunnel"] and keys["StateDirectoryMode"] == ["0700"]


def test_notify_without_socket_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(monkeypatch, tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"tunnel-test-{os.getpid()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = str(tmp_path / "notify")
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        assert sdnotify.notify("READY=1\nSTATUS=x") is True
        sock.settimeout(5)
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"
    finally:
        sock.close()


def test_notify_to_a_dead_socket_is_only_logged(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert sdnotify.notify("READY=1") is False


@pytest.mark.netns
def test_ready_arrives_only_once_the_interface_is_up(netns_factory, tmp_path):
    topo = netns_factory("sv")
    ns = topo.netns("n")
    ifname = topo.unique_ifname("svn")
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(30)
    private, _ = genkey()
    _, peer = genkey()
    config = (f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\nAddress = 10.71.0.1/24\n\n"
              f"[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.72.0.0/16\n")
    # Started by hand, not through tunnelproc: this test alone owns NOTIFY_SOCKET.
    conf = tmp_path / f"{ifname}.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, config.encode())
    os.close(fd)
    env = tunnel_env(str(tmp_path / "state"))
    env["NOTIFY_SOCKET"] = notify_path
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as logf:
        proc = ns.popen([sys.executable, "-m", "tunnel", "up", str(conf)], env=env, stdout=logf,
                        stderr=subprocess.STDOUT)

    def log() -> str:
        return log_path.read_text(errors="replace")

    try:
        messages = []
        while not any(m.startswith(b"READY=1") for m in messages):
            try:
                messages.append(listener.recv(4096))
            except socket.timeout:
                raise AssertionError(f"no READY=1 within 30 s:\n{log()}")
        # At the moment READY=1 arrived, everything the unit promises is there.
        assert ns.run(["ip", "link", "show", "dev", ifname], check=False).returncode == 0
        assert "10.71.0.1/24" in ns.run(["ip", "addr", "show", "dev", ifname]).stdout
        assert "10.72.0.0/16" in ns.run(["ip", "route", "show", "dev", ifname]).stdout
        assert os.path.exists(f"/var/run/wireguard/{ifname}.sock")
        assert messages == [f"READY=1\nSTATUS={ifname} up".encode()]
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0, log()
        listener.settimeout(5)
        assert listener.recv(4096) == b"STOPPING=1"
    finally:
        listener.close()
