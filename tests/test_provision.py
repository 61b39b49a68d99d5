"""Server provisioning files, rollback, QR codes, metrics and drop summaries (no root needed)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat
import struct
import threading
import urllib.request
import zlib

import pytest

from server import control, droplog, metrics, provision, qr
from server.provision import ProvisionError
from tunnel.config import load_config, parse_config
from tunnel.dataplane import Stats
from tunnel.protocol import Device
from tunnel.protocol.crypto import DH_PUBKEY

IF = "wgp0"


@pytest.fixture
def srv(tmp_path):
    d = str(tmp_path / "etc")
    provision.init_server(d, IF, "vpn.example.com", pools=["10.8.0.0/29", "fd08::/64"], dns=["10.8.0.1"],
                          sites=["192.168.50.0/24"])
    return d, str(tmp_path / "run")  # (config dir, socket dir with no daemon)


@contextlib.contextmanager
def fake_daemon(socket_dir: str, answer: str):
    """A control socket that answers every request with ANSWER and records them."""
    seen: list[str] = []

    def handler(text: str) -> str:
        seen.append(text)
        return answer

    server = control.ControlServer(IF, handler, socket_dir)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            server.on_readable()
            stop.wait(0.005)

    t = threading.Thread(target=loop)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()
        server.close()


def _snapshot(directory: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, directory)] = open(path, "rb").read()
    return out


def test_init_writes_private_files_that_wg_quick_can_read(srv):
    d, _ = srv
    p = provision.paths(d, IF)
    for path in (p.conf, p.settings):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = load_config(p.conf)
    assert [str(a) for a in config.interface.addresses] == ["10.8.0.1/29", "fd08::1/64"]
    assert config.interface.listen_port == 51820 and config.peers == []
    assert config.to_setconf_text()  # nothing of ours in it
    settings = json.loads(open(p.settings).read())
    assert settings["endpoint"] == "vpn.example.com" and settings["nat"] is True
    with pytest.raises(ProvisionError, match="already exists"):
        provision.init_server(d, IF, "vpn.example.com")


def test_default_pools_are_ipv4_and_a_random_ula(tmp_path):
    provision.init_server(str(tmp_path), "wgq", "192.0.2.1:4444")
    settings = json.loads(open(tmp_path / "wgq.server.json").read())
    v4, v6 = (ipaddress.ip_network(p) for p in settings["pools"])
    assert str(v4) == "10.8.0.0/24" and v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd00::/8"))
    assert settings["port"] == 4444


@pytest.mark.parametrize("kwargs, message", [
    ({"endpoint": "a b"}, "endpoint"),
    ({"endpoint": "host:99999"}, "port"),
    ({"pools": ["10.8.0.1/24"]}, "pool"),
    ({"pools": ["10.8.0.0/24", "10.9.0.0/24"]}, "at most one"),
    ({"pools": ["10.8.0.0/31"]}, "too small"),
    ({"dns": ["dns.example"]}, "DNS"),
    ({"sites": ["300.1.1.0/24"]}, "site"),
    ({"metrics": "localhost:0"}, "MetricsAddress"),
    ({"port": 0}, "listen port"),
])
def test_init_validation(tmp_path, kwargs, message):
    args = {"endpoint": "vpn.example.com", **kwargs}
    with pytest.raises(ProvisionError, match=message):
        provision.init_server(str(tmp_path), "wgv", args.pop("endpoint"), **args)
    assert not os.path.exists(tmp_path / "wgv.conf")


def test_add_client_allocates_addresses_and_writes_a_working_client(srv):
    d, sockets = srv
    added = provision.add_client(d, IF, "alice", socket_dir=sockets)
    assert not added.live and added.addresses == ["10.8.0.2/32", "fd08::2/128"]
    client = parse_config(added.config_text)
    assert [str(a) for a in client.interface.addresses] == added.addresses
    assert [str(a) for a in client.interface.dns] == ["10.8.0.1"]
    server_peer = client.peers[0]
    assert server_peer.endpoint == ("vpn.example.com", 51820) and server_peer.persistent_keepalive == 25
    assert [str(n) for n in server_peer.allowed_networks()] == ["0.0.0.0/0", "::/0"]
    server = load_config(provision.paths(d, IF).conf)
    assert server_peer.public_key == server.interface.public_key
    assert server.peers[0].name == "alice"
    assert server.peers[0].public_key == client.interface.public_key
    assert server.peers[0].preshared_key == server_peer.preshared_key is not None
    assert stat.S_IMODE(os.stat(added.path).st_mode) == 0o600
    # the stripped file is what `wg setconf` takes
    assert "DNS" not in client.to_setconf_text() and "Address" not in client.to_setconf_text()

    split = provision.add_client(d, IF, "bob", split=True, socket_dir=sockets)
    assert split.addresses == ["10.8.0.3/32", "fd08::3/128"]
    assert "AllowedIPs = 10.8.0.0/29, fd08::/64, 192.168.50.0/24" in split.config_text


def test_add_client_refuses_duplicates_bad_names_and_a_full_pool(srv):
    d, sockets = srv
    provision.add_client(d, IF, "alice", socket_dir=sockets)
    before = _snapshot(d)
    for name, message in (("alice", "already exists"), ("bad name", "client name"), ("../x", "client name"),
                          ("", "client name")):
        with pytest.raises(ProvisionError, match=message):
            provision.add_client(d, IF, name, socket_dir=sockets)
    assert _snapshot(d) == before
    for i in range(4):  # /29: .1 server, .2 alice, .3-.6 free
        provision.add_client(d, IF, f"c{i}", socket_dir=sockets)
    with pytest.raises(ProvisionError, match="full"):
        provision.add_client(d, IF, "late", socket_dir=sockets)


def test_without_init_there_is_a_clear_error(tmp_path):
    with pytest.raises(ProvisionError, match="tunnel server init"):
        provision.add_client(str(tmp_path), IF, "alice")
    with pytest.raises(ProvisionError, match="interface name"):
        provision.add_client(str(tmp_path), "much-too-long-name", "alice")


def test_running_daemon_gets_the_peer(srv):
    d, sockets = srv
    with fake_daemon(sockets, "errno=0\n\n") as seen:
        added = provision.add_client(d, IF, "alice", socket_dir=sockets)
    assert added.live
    pub = parse_config(added.config_text).interface.public_key
    server = load_config(provision.paths(d, IF).conf)
    lines = seen[0].split("\n")
    assert lines[:3] == ["set=1", f"public_key={DH_PUBKEY(parse_config(added.config_text).interface.private_key).hex()}",
                         "name=alice"]
    assert f"preshared_key={server.peers[0].preshared_key.hex()}" in lines
    assert lines[-2:] == ["allowed_ip=10.8.0.2/32", "allowed_ip=fd08::2/128"]
    assert pub == server.peers[0].public_key


def test_refusal_by_the_daemon_rolls_every_file_back(srv):
    d, sockets = srv
    provision.add_client(d, IF, "alice", socket_dir=sockets)
    before = _snapshot(d)
    with fake_daemon(sockets, "errno=-22\n\n"):
        with pytest.raises(ProvisionError, match="refused the change: Invalid argument"):
            provision.add_client(d, IF, "bob", socket_dir=sockets)
        assert _snapshot(d) == before
        with pytest.raises(ProvisionError, match="refused"):
            provision.remove_client(d, IF, "alice", socket_dir=sockets)
        assert _snapshot(d) == before


def test_remove_and_list(srv):
    d, sockets = srv
    provision.add_client(d, IF, "alice", socket_dir=sockets)
    bob = provision.add_client(d, IF, "bob", socket_dir=sockets)
    bob_pub = parse_config(bob.config_text).interface.public_key
    assert [c.name for c in provision.list_clients(d, IF, sockets)] == ["alice", "bob"]
    answer = (f"private_key={'00' * 32}\nlisten_port=51820\npublic_key={bob_pub.hex()}\nendpoint=192.0.2.9:1234\n"
              "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=0\ntx_bytes=10\nrx_bytes=20\n"
              "allowed_ip=10.8.0.3/32\nerrno=0\n\n")
    with fake_daemon(sockets, answer):
        listed = provision.list_clients(d, IF, sockets)
    alice, bob_info = listed
    assert not alice.online and alice.latest_handshake == 0
    assert bob_info.online and bob_info.endpoint == "192.0.2.9:1234"
    assert (bob_info.latest_handshake, bob_info.rx_bytes, bob_info.tx_bytes) == (1700000000, 20, 10)
    with fake_daemon(sockets, "errno=0\n\n") as seen:
        assert provision.remove_client(d, IF, "alice", socket_dir=sockets) is True
    assert seen[0].split("\n")[2] == "remove=true"
    assert [c.name for c in provision.list_clients(d, IF, sockets)] == ["bob"]
    assert not os.path.exists(provision.paths(d, IF).client("alice"))
    with pytest.raises(ProvisionError, match="no client named"):
        provision.remove_client(d, IF, "alice", socket_dir=sockets)
    # a freed address is handed out again
    assert provision.add_client(d, IF, "carol", socket_dir=sockets).addresses[0] == "10.8.0.2/32"


# --- QR codes -----------------------------------------------------------------------


def _png_pixels(data: bytes) -> tuple[int, list[bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width = struct.unpack(">I", body[:4])[0]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[i * (width + 1):(i + 1) * (width + 1)] for i in range(width)]
    assert all(r[0] == 0 for r in rows)
    return width, [r[1:] for r in rows]


def test_png_holds_exactly_the_qr_matrix(tmp_path):
    text = "[Interface]\nPrivateKey = x\n"
    modules = qr.matrix(text)
    path = str(tmp_path / "c.png")
    qr.write_png(text, path, scale=3)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    width, rows = _png_pixels(open(path, "rb").read())
    assert width == 3 * len(modules)
    decoded = [[rows[3 * y][3 * x] == 0 for x in range(len(modules))] for y in range(len(modules))]
    assert decoded == modules
    # the quiet zone is light
    assert not any(modules[0]) and not any(row[0] for row in modules)


def test_svg_and_terminal_forms(tmp_path):
    text = "hello"
    modules = qr.matrix(text)
    path = str(tmp_path / "c.svg")
    qr.write_svg(text, path)
    svg = open(path).read()
    assert svg.count("h1v1h-1z") == sum(map(sum, modules))
    term = qr.terminal(text).splitlines()
    assert len(term) == (len(modules) + 1) // 2 and all(len(line) == len(modules) for line in term)
    assert term[0] == "█" * len(modules)  # quiet zone: light on a dark terminal
    assert qr.terminal(text, invert=True).splitlines()[0] == " " * len(modules)


# --- metrics and drop summaries ------------------------------------------------------


def test_metrics_endpoint_uses_exporter_names():
    device = Device(os.urandom(32), wall_epoch=1_700_000_000.0)
    peer = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.2/32", "fd08::2/128"], name="alice")
    peer.rx_bytes, peer.tx_bytes, peer.last_handshake = 1000, 2000, 5.0
    stats = Stats()
    stats.rx_packets, stats.cookie_replies = 7, 3
    stats.drops["replayed"] = 4
    served = metrics.start("wgm", device, stats, ("127.0.0.1", 0))
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=10).read().decode()
    finally:
        served.close()
    labels = 'allowed_ips="10.8.0.2/32,fd08::2/128",friendly_name="alice",interface="wgm",public_key="'
    assert f"wireguard_sent_bytes_total{{{labels}" in body
    lines = {line.split("{")[0]: line for line in body.splitlines() if line and not line.startswith("#")}
    assert lines["wireguard_sent_bytes_total"].endswith(" 2000.0")
    assert lines["wireguard_received_bytes_total"].endswith(" 1000.0")
    assert lines["wireguard_latest_handshake_seconds"].endswith(" 1.700000005e+09")
    assert 'tunnel_drops_total{interface="wgm",reason="replayed"} 4.0' in body
    assert 'tunnel_packets_total{direction="rx",interface="wgm"} 7.0' in body
    assert 'tunnel_cookie_replies_total{interface="wgm"} 3.0' in body


@pytest.mark.parametrize("bad", ["nohost:", "1.2.3.4:70000", "example.com:9100"])
def test_metrics_address_errors(bad):
    with pytest.raises(metrics.MetricsError):
        metrics.parse_address(bad)


def test_drop_summary_reports_only_what_changed():
    stats = Stats()
    summary = droplog.DropSummary("wgd", stats, period=3600)
    try:
        assert summary.summary() is None
        stats.drops["replayed"] += 3
        stats.drops["no_route"] += 5
        assert summary.summary() == "wgd: dropped 8 packet(s) in the last 3600 s: no_route 5, replayed 3"
        assert summary.summary() is None
    finally:
        summary.close()
