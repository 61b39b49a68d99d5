"""Server provisioning on the registry, the old-layout migration, the CLI's errors and QR codes
(no root needed). Metrics and drop summaries serve every interface: tests/test_services.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
import struct
import subprocess
import sys
import zlib

import pytest
from click.testing import CliRunner

from server import provision, qr
from server.expiry import ExpiryError, describe_expiry, parse_expiry
from server.provision import ProvisionError
from server.registry import open_registry
from tests.helpers.daemon import fake_daemon
from tunnel.cli import main as cli
from tunnel.config import Config, InterfaceConfig, PeerConfig, load_config, parse_config
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key

IF = "wgp0"


@pytest.fixture
def srv(tmp_path):
    d = str(tmp_path / "etc")
    provision.init_server(d, IF, "vpn.example.com", pools=["10.8.0.0/29", "fd08::/64"], dns=["10.8.0.1"],
                          sites=["192.168.50.0/24"], gateway="gw1")
    return d, str(tmp_path / "run")  # (config dir, socket dir with no daemon)


def _registry(d: str):
    return open_registry(os.path.join(d, f"{IF}.db"), create=False)


def test_init_makes_a_registry_and_a_conf_that_wg_quick_can_read(srv):
    d, _ = srv
    p = provision.paths(d, IF)
    for path in (p.conf, p.db, p.cache):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    config = load_config(p.conf)
    assert [str(a) for a in config.interface.addresses] == ["10.8.0.1/29", "fd08::1/64"]
    assert config.interface.listen_port == 51820 and config.peers == []
    assert config.to_setconf_text()  # nothing of ours in it
    text = open(p.conf).read()
    assert f"# Registry = {p.db}\n# Gateway = gw1\n" in text
    with _registry(d) as reg:
        s = reg.settings()
        assert s.endpoint == "vpn.example.com" and s.nat is True and s.dns == ("10.8.0.1",)
        assert encode_key(config.interface.private_key) == s.private_key
        assert [g.name for g in reg.gateways()] == ["gw1"]
    with pytest.raises(ProvisionError, match="already exists"):
        provision.init_server(d, IF, "vpn.example.com")


def test_default_pools_are_ipv4_and_a_random_ula(tmp_path):
    provision.init_server(str(tmp_path), "wgq", "192.0.2.1:4444")
    with open_registry(str(tmp_path / "wgq.db")) as reg:
        settings = reg.settings()
    v4, v6 = (ipaddress.ip_network(p) for p in settings.pools)
    assert str(v4) == "10.8.0.0/24" and v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd00::/8"))
    assert settings.port == 4444 and settings.listen_port == 51820


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
    ({"gateway": "bad name"}, "gateway name"),
    ({"registry": "mysql://db/x"}, "postgresql"),
])
def test_init_validation(tmp_path, kwargs, message):
    args = {"endpoint": "vpn.example.com", **kwargs}
    with pytest.raises(ProvisionError, match=message):
        provision.init_server(str(tmp_path), "wgv", args.pop("endpoint"), **args)
    assert not os.path.exists(tmp_path / "wgv.conf") and not os.path.exists(tmp_path / "wgv.db")


def test_add_client_allocates_addresses_and_writes_a_working_client(srv):
    d, sockets = srv
    added = provision.add_client(d, IF, "alice", socket_dir=sockets)
    assert added.daemon == "not running" and added.addresses == ["10.8.0.2/32", "fd08::2/128"]
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
    # the stripped file is what `wg setconf` takes
    assert "DNS" not in client.to_setconf_text() and "Address" not in client.to_setconf_text()
    # the registry keeps the client's key: show-client prints the same file again
    assert provision.client_config(d, IF, "alice") == added.config_text

    split = provision.add_client(d, IF, "bob", split=True, socket_dir=sockets)
    assert split.addresses == ["10.8.0.3/32", "fd08::3/128"]
    assert "AllowedIPs = 10.8.0.0/29, fd08::/64, 192.168.50.0/24" in split.config_text
    assert "192.168.50.0/24" in provision.client_config(d, IF, "bob")  # the choice is remembered


def test_add_client_refuses_duplicates_bad_names_and_a_full_pool(srv):
    d, sockets = srv
    provision.add_client(d, IF, "alice", socket_dir=sockets)
    conf = open(provision.paths(d, IF).conf).read()
    with _registry(d) as reg:
        revision = reg.revision()
    for name, extra, message in (("alice", {}, "already exists"), ("bad name", {}, "client name"),
                                 ("../x", {}, "client name"), ("", {}, "client name"),
                                 ("bob", {"groups": ["ok,no spaces"]}, "group name"),
                                 ("bob", {"expires": "yesterday"}, "expiry"),
                                 ("bob", {"expires": "2020-01-01"}, "in the past")):
        with pytest.raises(ProvisionError, match=message):
            provision.add_client(d, IF, name, socket_dir=sockets, **extra)
    assert open(provision.paths(d, IF).conf).read() == conf
    with _registry(d) as reg:
        assert reg.revision() == revision
    for i in range(4):  # /29: .1 server, .2 alice, .3-.6 free
        provision.add_client(d, IF, f"c{i}", socket_dir=sockets)
    with pytest.raises(ProvisionError, match="full"):
        provision.add_client(d, IF, "late", socket_dir=sockets)


def test_without_init_there_is_a_clear_error(tmp_path):
    with pytest.raises(ProvisionError, match="tunnel server init"):
        provision.add_client(str(tmp_path), IF, "alice")
    with pytest.raises(ProvisionError, match="tunnel server init"):
        provision.list_clients(str(tmp_path / "none"), IF)
    with pytest.raises(ProvisionError, match="interface name"):
        provision.add_client(str(tmp_path), "much-too-long-name", "alice")


def test_groups_and_expiry(srv):
    d, sockets = srv
    now = 1_900_000_000.0
    added = provision.add_client(d, IF, "temp", groups=["visitors", "work,management"], expires="8h",
                                 socket_dir=sockets, now=now)
    assert added.groups == ("management", "visitors", "work") and added.expires_at == now + 8 * 3600
    assert provision.set_groups(d, IF, "temp", "work").groups == ("work",)
    assert provision.set_groups(d, IF, "temp", "").groups == ()
    with pytest.raises(ProvisionError, match="no client named 'ghost'"):
        provision.set_groups(d, IF, "ghost", "work")
    with pytest.raises(ProvisionError, match="group name"):
        provision.set_groups(d, IF, "temp", "work,-bad")
    assert provision.set_expiry(d, IF, "temp", "never").expires_at is None
    assert provision.set_expiry(d, IF, "temp", "1d", now=now).expires_at == now + 86400

    # An expired client stays in the registry (list shows it) but leaves the server's file.
    provision.add_client(d, IF, "staff", socket_dir=sockets)
    p = provision.paths(d, IF)
    with _registry(d) as reg:
        provision.publish(p, reg.snapshot(), provision.read_local(p), now=now + 86400 + 1)
    assert [x.name for x in load_config(p.conf).peers] == ["staff"]
    listed = {c.name: c for c in provision.list_clients(d, IF, sockets, now=now + 86400 + 1)}
    assert listed["temp"].expired and not listed["staff"].expired


def test_the_running_daemon_is_watched_not_told(srv):
    """add/remove-client change the registry only; the control socket is read to report the daemon's state."""
    d, sockets = srv
    held: set[str] = set()

    def answer(request: str) -> str:
        assert request.startswith("get=1"), request  # never a set: the reconciler applies changes
        return "".join(f"public_key={k}\n" for k in held) + "errno=0\n\n"

    with fake_daemon(IF, sockets, answer):
        with _registry(d):
            pass
        provision.CONFIRM_TIMEOUT, old = 0.3, provision.CONFIRM_TIMEOUT
        try:
            assert provision.add_client(d, IF, "alice", socket_dir=sockets).daemon == "pending"
            with _registry(d) as reg:
                held.add(__import__("base64").b64decode(reg.client("alice").public_key).hex())
            assert provision.add_client(d, IF, "bob", socket_dir=sockets).daemon == "pending"
            assert provision.remove_client(d, IF, "bob", socket_dir=sockets) == "applied"
            assert provision.remove_client(d, IF, "alice", socket_dir=sockets) == "pending"
        finally:
            provision.CONFIRM_TIMEOUT = old


def test_list_shows_live_state(srv):
    d, sockets = srv
    provision.add_client(d, IF, "alice", socket_dir=sockets)
    bob = provision.add_client(d, IF, "bob", groups=["work"], socket_dir=sockets)
    bob_pub = parse_config(bob.config_text).interface.public_key
    assert [c.name for c in provision.list_clients(d, IF, sockets)] == ["alice", "bob"]
    answer = (f"private_key={'00' * 32}\nlisten_port=51820\npublic_key={DH_PUBKEY(parse_config(bob.config_text).interface.private_key).hex()}\n"
              "endpoint=192.0.2.9:1234\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=0\n"
              "tx_bytes=10\nrx_bytes=20\nallowed_ip=10.8.0.3/32\nerrno=0\n\n")
    with fake_daemon(IF, sockets, answer):
        alice, bob_info = provision.list_clients(d, IF, sockets)
    assert not alice.online and alice.latest_handshake == 0
    assert bob_info.online and bob_info.endpoint == "192.0.2.9:1234" and bob_info.groups == ["work"]
    assert (bob_info.latest_handshake, bob_info.rx_bytes, bob_info.tx_bytes) == (1700000000, 20, 10)
    assert bob_info.public_key == encode_key(bob_pub)
    assert provision.remove_client(d, IF, "alice", socket_dir=sockets) == "not running"
    assert [c.name for c in provision.list_clients(d, IF, sockets)] == ["bob"]
    with pytest.raises(ProvisionError, match="no client named"):
        provision.remove_client(d, IF, "alice", socket_dir=sockets)
    # a freed address is handed out again
    assert provision.add_client(d, IF, "carol", socket_dir=sockets).addresses[0] == "10.8.0.2/32"


def test_clients_list_every_gateway_clients_may_dial(srv, tmp_path):
    d, run = srv
    alone = provision.add_client(d, IF, "alice", socket_dir=run).config_text
    assert "FailoverEndpoints" not in alone  # gw1's endpoint is the server's own
    db = provision.paths(d, IF).db
    provision.join_server(str(tmp_path / "gw2"), IF, db, gateway="gw2", endpoint="vpn2.example.com:4500")
    provision.join_server(str(tmp_path / "gw3"), IF, db, gateway="gw3", endpoint="[2001:db8::3]")
    provision.join_server(str(tmp_path / "gw0"), IF, db, gateway="gw0")  # no endpoint of its own: not dialled
    with pytest.raises(ProvisionError, match="expected HOST, HOST:PORT"):
        provision.join_server(str(tmp_path / "gw4"), IF, db, gateway="gw4", endpoint="a,b")
    text = provision.add_client(str(tmp_path / "gw2"), IF, "bob", socket_dir=run).config_text
    assert "Endpoint = vpn.example.com:51820\n# FailoverEndpoints = vpn2.example.com:4500, [2001:db8::3]:51820\n" \
        in text
    server = parse_config(text).peers[0]
    assert server.endpoints() == [("vpn.example.com", 51820), ("vpn2.example.com", 4500), ("2001:db8::3", 51820)]
    assert "FailoverEndpoints" not in parse_config(text).to_setconf_text()
    # show-client writes what the registry holds now: alice's file lists the new gateways too
    assert provision.client_config(d, IF, "alice") == alone.replace(
        "Endpoint = vpn.example.com:51820\n",
        "Endpoint = vpn.example.com:51820\n# FailoverEndpoints = vpn2.example.com:4500, [2001:db8::3]:51820\n")


def test_a_postgres_registry_down_refuses_commands_in_one_line(tmp_path):
    from tests.pgserver import PgServer, skip_or_fail

    skip_or_fail()
    d = str(tmp_path / "etc")
    with PgServer.started() as pg:
        url = pg.create_database()
        provision.init_server(d, IF, "vpn.example.com", registry=url, gateway="gw1")
        assert "Registry = postgresql://" in open(provision.paths(d, IF).conf).read()
        provision.add_client(d, IF, "alice", socket_dir=str(tmp_path / "run"))
        joined = str(tmp_path / "gw2")
        provision.join_server(joined, IF, url, gateway="gw2")
        assert [c.name for c in provision.list_clients(joined, IF, str(tmp_path / "run"))] == ["alice"]
        assert load_config(provision.paths(joined, IF).conf).interface == \
            load_config(provision.paths(d, IF).conf).interface  # same key, port, addresses
        pg.stop()
        res = _cli("add-client", "bob", "--no-qr", "--dir", d, "-i", IF)
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output
        assert res.stderr.startswith("tunnel: registry postgresql://postgres@/") and "unreachable" in res.stderr
        assert "Traceback" not in res.output
    with pytest.raises(ProvisionError, match="unreachable"):
        provision.join_server(str(tmp_path / "gw3"), IF, url)


# --- the old file layout -------------------------------------------------------------


def _old_layout(d: str, with_backup_done: bool = False) -> dict:
    """A server as the file-based provisioning wrote it: IFACE.conf, IFACE.server.json, IFACE.clients/."""
    os.makedirs(os.path.join(d, f"{IF}.clients"), mode=0o700)
    server_key = DH_GENERATE(os.urandom(32))
    peers, clients = [], {}
    for i, name in enumerate(("alice", "bob"), start=2):
        own, psk = DH_GENERATE(os.urandom(32)), os.urandom(32)
        addrs = [ipaddress.ip_interface(f"10.8.0.{i}/32"), ipaddress.ip_interface(f"fd08::{i}/128")]
        peers.append(PeerConfig(public_key=DH_PUBKEY(own), preshared_key=psk, allowed_ips=addrs, name=name))
        text = Config(interface=InterfaceConfig(private_key=own, addresses=addrs),
                      peers=[PeerConfig(public_key=DH_PUBKEY(server_key), preshared_key=psk,
                                        allowed_ips=[ipaddress.ip_interface("0.0.0.0/0")],
                                        endpoint=("vpn.example.com", 51820))]).to_text()
        clients[name] = (own, psk, text)
        if name == "alice":
            from tunnel.secrets import write_private_file

            write_private_file(os.path.join(d, f"{IF}.clients", f"{name}.conf"), text)
    iface = InterfaceConfig(private_key=server_key, listen_port=51821,
                            addresses=[ipaddress.ip_interface("10.8.0.1/24"), ipaddress.ip_interface("fd08::1/64")])
    iface.extensions["MetricsAddress"] = ["127.0.0.1:9586"]
    from tunnel.secrets import write_private_file

    write_private_file(os.path.join(d, f"{IF}.conf"), Config(interface=iface, peers=peers).to_text())
    write_private_file(os.path.join(d, f"{IF}.server.json"), json.dumps({
        "endpoint": "vpn.example.com", "port": 4500, "pools": ["10.8.0.0/24", "fd08::/64"], "dns": ["10.8.0.1"],
        "sites": [], "nat": True, "client_to_client": True, "keepalive": 15, "full_tunnel": False}))
    return {"server_key": server_key, "clients": clients}


def test_old_files_are_migrated_once_with_a_backup(tmp_path):
    d = str(tmp_path)
    old = _old_layout(d)
    before = {f: open(os.path.join(d, f), "rb").read() for f in (f"{IF}.conf", f"{IF}.server.json")}
    listed = provision.list_clients(d, IF, str(tmp_path / "run"))
    assert [(c.name, c.addresses) for c in listed] == [("alice", ["10.8.0.2/32", "fd08::2/128"]),
                                                      ("bob", ["10.8.0.3/32", "fd08::3/128"])]
    backups = [f for f in os.listdir(d) if f.startswith(f"{IF}.pre-registry-")]
    assert len(backups) == 1 and stat.S_IMODE(os.stat(os.path.join(d, backups[0])).st_mode) == 0o700
    backup = os.path.join(d, backups[0])
    for name, data in before.items():
        assert open(os.path.join(backup, name), "rb").read() == data
    assert os.path.exists(os.path.join(backup, f"{IF}.clients", "alice.conf"))
    assert not os.path.exists(os.path.join(d, f"{IF}.server.json"))
    assert not os.path.exists(os.path.join(d, f"{IF}.clients"))

    with _registry(d) as reg:
        s = reg.settings()
        assert s.private_key == encode_key(old["server_key"]) and s.listen_port == 51821 and s.port == 4500
        assert (s.client_to_client, s.keepalive, s.full_tunnel, s.dns) == (True, 15, False, ("10.8.0.1",))
        assert reg.gateways()[0].options == {"metrics": "127.0.0.1:9586"}
        alice, bob = reg.clients()
        assert alice.private_key == encode_key(old["clients"]["alice"][0])
        assert alice.preshared_key == encode_key(old["clients"]["alice"][1])
        assert bob.private_key is None  # its file was gone: the server never had it
    # the regenerated server file: same key, port, addresses and peers as before
    new = load_config(os.path.join(d, f"{IF}.conf"))
    was = parse_config(before[f"{IF}.conf"].decode())
    assert new.interface == was.interface and new.peers == was.peers
    # show-client prints alice's config; bob's cannot be printed
    alice_text = provision.client_config(d, IF, "alice")
    assert parse_config(alice_text).interface.private_key == old["clients"]["alice"][0]
    with pytest.raises(ProvisionError, match="its own key"):
        provision.client_config(d, IF, "bob")
    # once: the next command finds the registry and migrates nothing
    added = provision.add_client(d, IF, "carol", socket_dir=str(tmp_path / "run"))
    assert added.migration is None and added.addresses == ["10.8.0.4/32", "fd08::4/128"]
    assert len([f for f in os.listdir(d) if f.startswith(f"{IF}.pre-registry-")]) == 1


def test_a_migration_interrupted_after_the_registry_was_built_is_finished(tmp_path):
    d = str(tmp_path)
    _old_layout(d)
    p = provision.paths(d, IF)
    from server import filemigration

    # as if the process died right after renaming IFACE.db.migrating into place
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if dst == p.db:
            raise KeyboardInterrupt

    filemigration.os.replace = dying_replace
    try:
        with pytest.raises(KeyboardInterrupt):
            provision.list_clients(d, IF)
    finally:
        filemigration.os.replace = real_replace
    assert os.path.exists(p.db) and os.path.exists(p.legacy_settings)
    assert [c.name for c in provision.list_clients(d, IF)] == ["alice", "bob"]
    assert not os.path.exists(p.legacy_settings)
    assert open(p.conf).read().startswith("# Generated from the registry")


# --- the CLI ------------------------------------------------------------------------


def _cli(*args):
    return CliRunner().invoke(cli, ["server", *args], catch_exceptions=False)


def test_cli_add_list_set_groups_and_one_line_errors(srv):
    d, _ = srv
    common = ["--dir", d, "-i", IF]
    res = _cli("add-client", "alice", "--group", "work", "--group", "management", "--expires", "2d", "--no-qr",
               *common)
    assert res.exit_code == 0, res.output
    assert "groups management,work; expires " in res.stderr and "(in 2d)" in res.stderr
    assert res.stdout.startswith("[Interface]\nPrivateKey = ")
    assert _cli("add-client", "bob", "--no-qr", *common).exit_code == 0
    res = _cli("set-groups", "bob", "work,visitors", *common)
    assert res.exit_code == 0 and "client bob: groups visitors,work" in res.stderr
    lines = _cli("list", *common).stdout.splitlines()
    assert lines[0].split()[:5] == ["alice", "10.8.0.2/32,", "fd08::2/128", "management,work", "expires"]
    assert "(in 2d)" in lines[0] and "not on the running server" in lines[0]
    assert lines[1].split()[:6] == ["bob", "10.8.0.3/32,", "fd08::3/128", "visitors,work", "no", "expiry"]
    assert json.loads(_cli("list", "--json", *common).stdout)[1]["groups"] == ["visitors", "work"]
    for args, message in (
        (("set-groups", "ghost", "work"), "tunnel: no client named 'ghost'"),
        (("remove-client", "ghost"), "tunnel: no client named 'ghost'"),
        (("show-client", "ghost"), "tunnel: no client named 'ghost'"),
        (("add-client", "carol", "--group", "a b"), "tunnel: group name 'a b': use 1-32 of"),
        (("add-client", "carol", "--expires", "soon"), "tunnel: expiry 'soon': give a duration"),
        (("set-expiry", "alice", "1999-01-01"), "tunnel: expiry '1999-01-01' is in the past"),
    ):
        res = _cli(*args, *common)
        assert res.exit_code == 1 and res.stderr.startswith(message), res.output
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


# --- expiry -------------------------------------------------------------------------

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("text, expected", [
    ("8h", NOW + 8 * 3600), ("90m", NOW + 5400), ("2d", NOW + 2 * 86400), ("1w", NOW + 7 * 86400),
    ("1d12h", NOW + 36 * 3600), ("45s", NOW + 45),
    ("2026-12-31", dt.datetime(2027, 1, 1, tzinfo=UTC).timestamp()),  # through that whole day
    ("2026-12-31T18:00", dt.datetime(2026, 12, 31, 18, 0, tzinfo=UTC).timestamp()),
    ("2026-12-31T18:00:30", dt.datetime(2026, 12, 31, 18, 0, 30, tzinfo=UTC).timestamp()),
    ("2026-12-31T18:00+01:00", dt.datetime(2026, 12, 31, 17, 0, tzinfo=UTC).timestamp()),
    ("never", None),
])
def test_expiry_forms(text, expected):
    assert parse_expiry(text, NOW, UTC) == expected


@pytest.mark.parametrize("text, message", [
    ("0h", "more than zero"), ("8x", "give a duration"), ("", "give a duration"), ("h", "give a duration"),
    ("2026-12-02", "in the past"), ("2026-12-03T11:59", "in the past"), ("2026-13-01", "month"),
    ("tomorrow", "give a duration"),
])
def test_expiry_refusals(text, message):
    with pytest.raises(ExpiryError, match=message):
        parse_expiry(text, NOW, UTC)


def test_expiry_descriptions():
    assert describe_expiry(None, NOW, UTC) == "never expires"
    assert describe_expiry(NOW + 3 * 86400 + 4 * 3600, NOW, UTC) == "expires 2026-12-06 16:00 (in 3d4h)"
    assert describe_expiry(NOW - 300, NOW, UTC) == "expired 2026-12-03 11:55 (5m ago)"


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


def test_daemon_start_without_its_registry_serves_the_last_view(srv):
    """A registry unreachable at `up`: IFACE.conf's peers, the cache's settings and expiries."""
    from server import daemon
    from server.registry import RegistryUnavailable

    d, sockets = srv
    provision.add_client(d, IF, "temp", expires="1h", socket_dir=sockets)
    p = provision.paths(d, IF)
    with _registry(d) as reg:  # what the policy and the sessions features keep: cached for their listeners
        reg.set_policy("group work -> 192.168.50.0/24\n")
        reg.add_user("ann", "hash")
        session = reg.start_session("ann", "temp", gateway="gw1", expires_at=2e9, groups=("work",))
        provision.publish(p, reg.snapshot(), provision.locate(p)[0])
    snap = daemon._offline_start(p, RegistryUnavailable("registry x is unreachable"))
    assert snap.policy is not None and snap.policy.text == "group work -> 192.168.50.0/24\n"
    assert snap.sessions == (session,)
    assert snap.settings.pools == ("10.8.0.0/29", "fd08::/64") and snap.settings.sites == ("192.168.50.0/24",)
    assert snap.client("temp").expires_at is not None and snap.client("temp").private_key is None
    assert snap.settings.private_key == encode_key(load_config(p.conf).interface.private_key)
    with _registry(d) as reg:
        secrets = [reg.client("temp").private_key, reg.settings().private_key]
    cache = open(p.cache).read()
    assert snap.client("temp").public_key in cache and not any(k in cache for k in secrets)
    os.unlink(p.cache)
    bare = daemon._offline_start(p, RegistryUnavailable("registry x is unreachable"))
    assert bare.revision == -1 and bare.settings.pools == ("10.8.0.0/29", "fd08::/64")


# The `tunnel` command with qrcode "not installed": python -c CODE ARGS...
_WITHOUT_QRCODE = ("import sys; sys.modules['qrcode'] = None; from tunnel.cli import main; "
                   "main(sys.argv[1:], prog_name='tunnel')")


def test_without_qrcode_add_client_says_so_in_one_line(srv, tmp_path):
    """No qrcode: the client is made and its file printed, a one-line note stands for the QR code (exit 0);
    a picture asked for (--png/--svg) is refused before anything is made."""
    d, _ = srv

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _WITHOUT_QRCODE, "server", *args, "--dir", d, "-i", IF],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, TUNNEL_STATE_DIR=str(tmp_path / "state")))

    res = run("add-client", "alice")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[0] == (
        "no QR code shown: that needs the qrcode package (pip install 'tunnel[server]') (--no-qr: none wanted)")
    assert "[Interface]" in res.stdout
    res = run("add-client", "bob", "--png", str(tmp_path / "bob.png"))
    assert res.returncode == 1 and res.stderr == (
        "tunnel: --png and --svg need the qrcode package (pip install 'tunnel[server]')\n")
    assert not (tmp_path / "bob.png").exists()
    with _registry(d) as reg:
        assert [c.name for c in reg.clients()] == ["alice"]


def test_the_server_file_is_written_as_tunnel_config_writes_it(srv):
    """render writes the server's [Peer] sections as text (10,000 clients: no PeerConfig objects); it must be
    byte for byte what Config.to_text() makes of the same clients, and parse back to them."""
    from server import render
    from server.layout import Local

    d, _ = srv
    with _registry(d) as reg:
        reg.add_client("both", encode_key(DH_PUBKEY(os.urandom(32))), preshared_key=encode_key(os.urandom(32)))
        reg.add_client("v4only", encode_key(DH_PUBKEY(os.urandom(32))), addresses=["10.8.0.5"])
        reg.add_client("nopsk", encode_key(DH_PUBKEY(os.urandom(32))))
        snap = reg.snapshot()
    text = render.server_config(snap, Local(registry="x", gateway="gw1"), 0.0)
    body = text[text.index("[Interface]"):]
    built = parse_config(body)
    expected = Config(built.interface, [render.server_peer(c) for c in snap.active_clients(0.0)]).to_text()
    assert body == expected
    assert [(p.name, [str(a) for a in p.allowed_ips], p.preshared_key is not None) for p in built.peers] == [
        ("both", ["10.8.0.2/32", "fd08::2/128"], True), ("v4only", ["10.8.0.5/32"], False),
        ("nopsk", ["10.8.0.3/32", "fd08::3/128"], False)]
