"""What serves every interface beside its data plane: metrics and drop summaries (no root needed).

The control socket and the UAPI behind it: tests/test_uapi.py.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

import pytest

from tunnel import droplog, metrics
from tunnel.dataplane import Stats
from tunnel.protocol import Device
from tunnel.protocol.crypto import DH_PUBKEY


def test_metrics_endpoint_uses_exporter_names():
    device = Device(os.urandom(32), wall_epoch=1_700_000_000.0)
    peer = device.add_peer(DH_PUBKEY(os.urandom(32)), allowed_ips=["10.8.0.2/32", "fd08::2/128"], name="alice")
    peer.rx_bytes, peer.tx_bytes, peer.last_handshake = 1000, 2000, 5.0
    stats = Stats()
    stats.rx_packets, stats.cookie_replies, stats.endpoint_switches = 7, 3, 2
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
    assert 'tunnel_endpoint_switches_total{interface="wgm"} 2.0' in body


def test_metrics_address_of_a_port_alone_is_loopback():
    """`MetricsAddress = 9586` binds 127.0.0.1, never every address (issue 9, item 10)."""
    assert metrics.parse_address("9586") == ("127.0.0.1", 9586)
    assert metrics.parse_address("0.0.0.0:9586") == ("0.0.0.0", 9586)
    assert metrics.parse_address("[::]:9586") == ("::", 9586)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    served = metrics.start("wgl", Device(os.urandom(32), wall_epoch=0.0), Stats(), str(port))
    try:
        assert served.httpd.server_address[:2] == ("127.0.0.1", port)
    finally:
        served.close()


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


def test_metrics_without_prometheus_client_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    device = Device(os.urandom(32), wall_epoch=0.0)
    with pytest.raises(metrics.MetricsError, match=r"^MetricsAddress needs the prometheus-client package"):
        metrics.start("wgm", device, Stats(), ("127.0.0.1", 0))
