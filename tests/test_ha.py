"""server/ha without root: settings, keepalived's config, its FIFO lines, VRRP adverts, split-brain
detection, the generated files, and the service's state handling on a SQLite registry.

With keepalived, namespaces and clients: tests/integration/test_ha_netns.py and test_ha_e2e.py.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time

import pytest

from server.ha.checks import parse_advert
from server.ha.keepalived import Files, render as render_keepalived
from server.ha.service import HaService, SecondMaster, parse_notify
from server.ha.settings import (
    HaError,
    Member,
    Plan,
    Shared,
    check_priority,
    check_vrid,
    default_vrid,
    member_from,
    parse_vip,
    plan_for,
    shared_from,
)
from server.layout import Local
from server.registry import Gateway, ServerSettings, Snapshot, open_registry
from server.render import client_config, client_endpoints, server_config
from tunnel.endpointstore import endpoint_text
from tunnel.protocol import Device
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key

# -- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("192.0.2.10", "give it with the prefix of its subnet"),
    ("192.0.2.300/24", "is not ADDRESS/PREFIX"),
    ("vpn.example.com/24", "is not ADDRESS/PREFIX"),
    ("192.0.2.0/24", "subnet's network address"),
    ("192.0.2.255/24", "subnet's broadcast address"),
    ("224.0.0.18/24", "not a unicast address"),
    ("127.0.0.5/8", "not a unicast address"),
    ("fe80::5/64", "not a unicast address"),
])
def test_a_vip_that_is_not_one_is_refused_in_one_line(text, message):
    with pytest.raises(HaError, match=message) as info:
        parse_vip(text)
    assert "\n" not in str(info.value)


def test_vips_vrids_and_priorities():
    assert parse_vip(" 192.0.2.10/24 ") == ipaddress.ip_interface("192.0.2.10/24")
    assert parse_vip("2001:db8::10/64") == ipaddress.ip_interface("2001:db8::10/64")
    assert parse_vip("192.0.2.10/32").network.prefixlen == 32
    assert default_vrid(parse_vip("10.70.0.100/24")) == 1 + int(ipaddress.ip_address("10.70.0.100")) % 255
    assert default_vrid(parse_vip("10.70.0.100/24")) != default_vrid(parse_vip("10.70.0.101/24"))
    assert all(1 <= default_vrid(parse_vip(f"10.0.{i}.{j}/16")) <= 255 for i in range(4) for j in range(1, 255))
    for bad in (0, 256, "7"):
        with pytest.raises(HaError, match="VRID"):
            check_vrid(bad)
    for bad in (0, 255):
        with pytest.raises(HaError, match="priority"):
            check_priority(bad)
    assert check_vrid(1) == 1 and check_priority(254) == 254


def _gw(name, dev=None, address=None, priority=100, preempt=True, state=None, beat=None, role="vrrp"):
    options = {"ha": {"dev": dev, "priority": priority, "preempt": preempt, **({"address": address} if address else {})}} \
        if dev else {}
    return Gateway(name=name, ha_role=role if dev else None, ha_state=state, last_heartbeat=beat, options=options)


def test_a_plan_needs_the_shared_setting_and_this_gateways_part_and_lists_the_other_members():
    extra = {"ha": {"vip": "10.70.0.100/24", "vrid": 7}}
    gateways = [_gw("gw1", "eth0", "10.70.0.1", 150), _gw("gw2", "eth1", "10.70.0.2"), _gw("gw3", "eth0"),
                _gw("gw4", "eth0", "2001:db8::4"), _gw("gw5"),
                Gateway(name="gw6", ha_role="vrrp", options={"ha": {"dev": "bad/dev"}})]
    plan = plan_for(extra, gateways, "gw1")
    assert plan == Plan("gw1", Shared(parse_vip("10.70.0.100/24"), 7), Member("eth0", 150, True, "10.70.0.1"),
                        ("10.70.0.2",))  # gw3 has no address yet, gw4 another family, gw5 no part, gw6 unreadable
    assert plan_for(extra, gateways, "gw5") is None and plan_for({}, gateways, "gw1") is None
    assert shared_from({"ha": None}) is None
    assert shared_from({"ha": {"vip": "10.70.0.100/24"}}).vrid == default_vrid(parse_vip("10.70.0.100/24"))
    with pytest.raises(HaError, match="gw6"):
        member_from(gateways[-1])
    with pytest.raises(HaError):
        shared_from({"ha": {"vip": "nonsense"}})


# -- keepalived's config, its FIFO, VRRP adverts ----------------------------------------------------


def _plan(peers=(), preempt=True, priority=150):
    return Plan("gw1", Shared(parse_vip("10.70.0.100/24"), 181), Member("g1-r", priority, preempt, "10.70.0.1"),
                tuple(peers))


def test_keepalived_config_unicast_to_the_other_members_and_multicast_alone():
    files = Files.of("/etc/wireguard", "wg0")
    assert files.fifo == "/etc/wireguard/wg0.ha/notify.fifo" and files.conf.startswith("/etc/wireguard/wg0.ha/")
    text = render_keepalived(_plan(["10.70.0.2", "10.70.0.3"]), ifname="wg0", address="10.70.0.1", fifo=files.fifo)
    body = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert body == [
        "global_defs {", "router_id gw1", 'vrrp_notify_fifo "/etc/wireguard/wg0.ha/notify.fifo"',
        "fifo_write_vrrp_states_on_reload", "}",
        "vrrp_instance tunnel_wg0 {", "state BACKUP", "interface g1-r", "virtual_router_id 181", "priority 150",
        "advert_int 1", "unicast_src_ip 10.70.0.1", "unicast_peer {", "10.70.0.2", "10.70.0.3", "}",
        "virtual_ipaddress {", "10.70.0.100/24 dev g1-r", "}", "}"]
    alone = render_keepalived(_plan(preempt=False), ifname="wg0", address="10.70.0.1", fifo=files.fifo)
    assert "unicast" not in alone and "    nopreempt\n" in alone and "state BACKUP" in alone
    with pytest.raises(HaError):
        render_keepalived(_plan(), ifname="wg0", address="10.70.0.1", fifo='/tmp/a"b')


def test_fifo_lines():
    assert parse_notify('INSTANCE "tunnel_wg0" MASTER 150\n', "tunnel_wg0") == "master"
    assert parse_notify('INSTANCE "tunnel_wg0" BACKUP 150', "tunnel_wg0") == "backup"
    assert parse_notify('INSTANCE "tunnel_wg0" FAULT 0', "tunnel_wg0") == "fault"
    assert parse_notify('INSTANCE "tunnel_wg0" STOP 150', "tunnel_wg0") == "stopped"
    assert parse_notify('INSTANCE "tunnel_wg1" MASTER 150', "tunnel_wg0") is None
    assert parse_notify('GROUP "g" MASTER', "tunnel_wg0") is None
    assert parse_notify("garbage", "tunnel_wg0") is None


def test_vrrp_adverts_v2_and_v3():
    v2 = bytes([0x21, 42, 200, 2, 0, 1, 0, 0]) + socket.inet_aton("10.72.0.50") + socket.inet_aton("10.72.0.51") + bytes(8)
    assert parse_advert(v2, 4) == (42, ("10.72.0.50", "10.72.0.51"))
    v3 = bytes([0x31, 7, 100, 1]) + struct.pack("!HH", 100, 0) + socket.inet_pton(socket.AF_INET6, "2001:db8::10")
    assert parse_advert(v3, 6) == (7, ("2001:db8::10",))
    assert parse_advert(v2[:9], 4) is None  # an address cut short
    assert parse_advert(bytes([0x22]) + v2[1:], 4) is None  # not an advertisement
    assert parse_advert(b"\x21", 4) is None


# -- split brain -----------------------------------------------------------------------------------


def test_a_second_master_counts_only_while_its_heartbeat_moves():
    sm = SecondMaster(stale=6)
    dead = _gw("gw2", "eth0", state="master", beat=100.0)  # died holding the VIP: its row stays "master"
    assert sm.look([dead], "gw1", True, 0) == (set(), set())
    assert sm.look([dead], "gw1", True, 2) == (set(), set())
    assert sm.look([dead], "gw1", True, 60) == (set(), set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=130.0)], "gw1", True, 62) == ({"gw2"}, set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=130.0)], "gw1", True, 64) == (set(), set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=132.0)], "gw1", True, 66) == (set(), set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=132.0)], "gw1", True, 73) == (set(), {"gw2"})
    assert sm.look([_gw("gw2", "eth0", state="master", beat=140.0)], "gw1", True, 74) == ({"gw2"}, set())
    assert sm.look([_gw("gw2", "eth0", state="backup", beat=142.0)], "gw1", True, 76) == (set(), {"gw2"})
    assert sm.look([_gw("gw2", "eth0", state="master", beat=150.0)], "gw1", True, 78) == (set(), set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=152.0)], "gw1", True, 80) == ({"gw2"}, set())
    assert sm.look([_gw("gw2", "eth0", state="master", beat=154.0)], "gw1", False, 82) == (set(), {"gw2"})
    assert sm.claimants == set() and sm.seen == {}


# -- what the registry's setting does to the generated files ---------------------------------------


def _snapshot(extra, gateways):
    key = encode_key(DH_GENERATE(os.urandom(32)))
    settings = ServerSettings(private_key=key, endpoint="vpn.example.com", pools=("10.8.0.0/24",), extra=extra)
    return Snapshot(revision=3, settings=settings, clients=(), policy=None, sessions=(), gateways=tuple(gateways))


def test_clients_dial_the_vip_and_only_members_listen_on_it():
    gateways = [Gateway(name="gw1", endpoint="192.0.2.1", ha_role="vrrp", options={"ha": {"dev": "eth0"}}),
                Gateway(name="gw2", endpoint="192.0.2.2")]
    on = _snapshot({"ha": {"vip": "10.70.0.100/24", "vrid": 5}}, gateways)
    off = _snapshot({}, gateways)
    assert client_endpoints(on.settings, gateways) == [("10.70.0.100", 51820)]
    assert client_endpoints(off.settings, gateways) == [("vpn.example.com", 51820), ("192.0.2.1", 51820),
                                                         ("192.0.2.2", 51820)]
    assert "ListenAddress = 10.70.0.100\n" in server_config(on, Local("reg", "gw1"), 0)
    assert "ListenAddress" not in server_config(on, Local("reg", "gw2"), 0)  # not a member
    assert "ListenAddress" not in server_config(off, Local("reg", "gw1"), 0)
    from server.registry import Client

    client = Client(name="alice", public_key=encode_key(DH_PUBKEY(DH_GENERATE(os.urandom(32)))),
                    private_key=encode_key(DH_GENERATE(os.urandom(32))), ipv4="10.8.0.2")
    text = client_config(on.settings, client, None, gateways)
    assert "Endpoint = 10.70.0.100:51820\n" in text and "FailoverEndpoints" not in text


# -- the service, without keepalived ---------------------------------------------------------------


class _Plane:
    def __init__(self):
        self.calls, self.performed = [], []
        self.clock = time.monotonic

    def call_soon_threadsafe(self, fn):
        self.calls.append(fn)

    def perform(self, actions, now):
        self.performed.extend(actions)

    def turn(self):
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


class _Interface:
    def __init__(self, device):
        self.name, self.device, self.plane = "wgh", device, _Plane()


class _Reconciler:
    def add_listener(self, fn):
        self.listener = fn


@pytest.fixture
def registry(tmp_path):
    path = str(tmp_path / "r.db")
    reg = open_registry(path)
    reg.initialize(ServerSettings(private_key=encode_key(DH_GENERATE(os.urandom(32))), pools=("10.8.0.0/24",),
                                  extra={"ha": {"vip": "10.70.0.100/24", "vrid": 9}}))
    for name in ("gw1", "gw2"):
        reg.register_gateway(name)
        reg.set_gateway(name, ha_role="vrrp", options={"ha": {"dev": "eth0"}})
    yield path, reg
    reg.close()


def _service(path, device):
    from tunnel.resume import Pacer

    with open_registry(path, create=False) as reg:
        plan = plan_for(reg.settings().extra, reg.gateways(), "gw1")
    svc = HaService(lambda: open_registry(path, create=False), _Reconciler(), plan, address="10.70.0.1",
                    server_dir="/nonexistent")
    iface = _Interface(device)
    svc._interface, svc.ifname = iface, iface.name
    svc._pacer = Pacer(iface.plane.call_soon_threadsafe, svc._take_over_batch)  # not started: batches by hand
    return svc, iface


def test_on_master_every_recent_peer_is_handshaken_at_its_registry_endpoint(registry, caplog):
    caplog.set_level(logging.INFO, logger="tunnel")
    path, reg = registry
    device = Device(os.urandom(32), wall_epoch=time.time() - time.monotonic())
    recent = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.2/32"], name="recent")
    old = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.3/32"], name="old")
    now = time.time()
    reg.record_endpoints([(encode_key(recent.public_key), endpoint_text(("198.51.100.7", 4444)), now - 20)],
                         gateway="gw2")  # seen by the other gateway
    reg.record_endpoints([(encode_key(old.public_key), endpoint_text(("198.51.100.8", 5555)), now - 4000)],
                         gateway="gw2")
    svc, iface = _service(path, device)
    try:
        svc._registry_work(False)
        assert {g.name: g.options["ha"].get("address") for g in reg.gateways()} == {"gw1": "10.70.0.1", "gw2": None}
        svc._became("backup")
        svc._became("master")
        svc._registry_work(False)  # the registry thread's round: the takeover's endpoints first
        batch, _ = svc._pacer.next_batch(time.monotonic())
        svc._take_over_batch(batch)
        sent = [a.endpoint for a in iface.plane.performed if type(a).__name__ == "SendDatagram"]
        assert sent == [("198.51.100.7", 4444)] and svc.takeover_handshakes == 1
        assert "MASTER of 10.70.0.100/24: handshaking with 1 peer(s) seen in the last 300 s" in caplog.text
        svc._registry_work(False)
        assert {g.name: g.ha_state for g in reg.gateways()} == {"gw1": "master", "gw2": None}
        status = svc.status()
        assert status["state"] == "master" and status["transitions"] == 2
        assert status["lines"][0].startswith("high availability: MASTER for 10.70.0.100/24 on eth0 (VRID 9, ")
        families = {f.name: f for f in svc.metric_families()}
        assert {s.labels["state"]: s.value for s in families["tunnel_ha_state"].samples} == {
            "master": 1, "backup": 0, "fault": 0, "stopped": 0}
    finally:
        svc.close()


def test_a_second_master_is_logged_and_its_end_brings_the_peers_back(registry, caplog):
    caplog.set_level(logging.INFO, logger="tunnel")
    path, reg = registry
    device = Device(os.urandom(32), wall_epoch=time.time() - time.monotonic())
    svc, iface = _service(path, device)
    try:
        svc._became("master")
        reg.set_gateway("gw2", ha_state="master")
        for beat in (10.0, 11.0, 12.0):
            reg.heartbeat("gw2", now=beat)
            svc._registry_work(True)
        assert "split brain: gateway gw2 holds 10.70.0.100/24 too" in caplog.text
        assert svc.status()["split_brain"] == ["gw2"]
        reg.set_gateway("gw2", ha_state="backup")
        svc._registry_work(True)
        assert "split brain over: gateway gw2 no longer claims 10.70.0.100/24" in caplog.text
        assert "still MASTER of 10.70.0.100/24: handshaking with 0 peer(s) seen" in caplog.text
        # the registry unreachable: the state waits, one warning, then it is written
        os.rename(path, path + ".away")
        svc._registry = None
        svc._became("backup")
        svc._registry_work(False)
        assert "the state is kept here and written when it is back" in caplog.text
        assert svc._pending_state == "backup"
        os.rename(path + ".away", path)
        svc._retry_at = 0.0  # its REGISTRY_RETRY is up
        svc._registry_work(False)
        assert {g.name: g.ha_state for g in reg.gateways()}["gw1"] == "backup" and svc._pending_state is None
        assert "HA: the registry is reachable again" in caplog.text
    finally:
        if os.path.exists(path + ".away"):
            os.rename(path + ".away", path)
        svc.close()


def test_the_registry_reaches_keepalived_with_a_reload_or_a_restart_hint(registry, tmp_path, caplog):
    from server.ha.keepalived import Keepalived

    caplog.set_level(logging.INFO, logger="tunnel")
    path, reg = registry
    svc, iface = _service(path, Device(os.urandom(32), wall_epoch=0.0))
    files = Files.of(str(tmp_path), "wgh")
    os.makedirs(files.directory)
    svc._keepalived = Keepalived(files, svc.plan, ifname="wgh", address="10.70.0.1")  # not started: no process
    try:
        reg.set_gateway("gw2", options={"ha": {"dev": "eth0", "address": "10.70.0.2"}})
        reg.set_gateway("gw1", options={"ha": {"dev": "eth0", "priority": 120, "preempt": False}})
        svc._on_snapshot(reg.snapshot(), time.time())
        with open(files.conf) as f:
            text = f.read()
        assert "priority 120" in text and "nopreempt" in text and "        10.70.0.2\n" in text
        assert "keepalived reloaded: priority 120, no preemption, peers 10.70.0.2" in caplog.text
        reg.update_settings(ha={"vip": "10.70.0.101/24", "vrid": 9})
        for _ in range(2):
            svc._on_snapshot(reg.snapshot(), time.time())
        assert caplog.text.count("restart the server to apply it (it serves 10.70.0.100/24 on eth0") == 1
        with open(files.conf) as f:
            assert f.read() == text  # the running VIP stays
    finally:
        svc._keepalived = None
        svc.close()


def test_without_the_registry_a_new_master_handshakes_with_the_peers_it_knows(registry, caplog):
    caplog.set_level(logging.INFO, logger="tunnel")
    path, reg = registry
    device = Device(os.urandom(32), wall_epoch=time.time() - time.monotonic())
    known = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.2/32"], endpoint=("198.51.100.2", 2))
    device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.3/32"])  # never seen: nowhere to send
    svc, iface = _service(path, device)
    os.rename(path, path + ".away")
    try:
        svc._became("master")
        svc._registry_work(False)
        batch, _ = svc._pacer.next_batch(time.monotonic())
        svc._take_over_batch(batch)
        sent = [a.endpoint for a in iface.plane.performed if type(a).__name__ == "SendDatagram"]
        assert sent == [known.endpoint]
        assert "handshaking with 2 peer(s) at the endpoints this gateway knew: the registry is unreachable" \
            in caplog.text
        # A registry that only hangs: after TAKEOVER_WAIT the FIFO's thread does not wait for it.
        svc._became("backup")
        svc._became("master")
        svc._takeover = (svc._takeover[0], svc._takeover[1] - 5)
        svc._fall_back_if_late()
        assert "the registry did not answer within 1 s" in caplog.text and svc._takeover is None
    finally:
        os.rename(path + ".away", path)
        svc.close()
