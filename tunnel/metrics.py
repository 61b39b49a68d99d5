"""The Prometheus endpoint at MetricsAddress = HOST:PORT.

Per peer, under prometheus_wireguard_exporter's names and labels, so its
dashboards work unchanged:
    wireguard_sent_bytes_total, wireguard_received_bytes_total,
    wireguard_latest_handshake_seconds
        {interface, public_key, allowed_ips, friendly_name}
and our interface counters as tunnel_* (packets, bytes, drops by reason,
handshakes, cookie replies, endpoint switches, peers).

It serves every interface that sets MetricsAddress in [Interface], client
or server: the figures are the data plane's and the protocol core's, nothing
a role adds. prometheus-client is optional (the `metrics` extra): without it
an interface that asks for metrics fails to start with a one-line message.

Rules kept here:
- served by prometheus_client's HTTP thread, never by the data-plane loop;
- that thread only reads: it copies the peer dict and the drop counter
  (one C-level copy each, atomic under the GIL) and retries the rare copy
  that races with a change, so it never locks or slows the loop;
- values are computed at scrape time (a custom collector), nothing is
  pushed from the fast path.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable

from .config import quote_value
from .protocol.crypto import encode_key

log = logging.getLogger("tunnel")


class MetricsError(ValueError):
    """A MetricsAddress we cannot use."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`; a port alone is loopback's (127.0.0.1:PORT).

    Per-peer figures (endpoints, traffic, handshakes) are nobody else's
    business: serving them beyond this machine takes an address written out,
    such as 0.0.0.0:9586 or [::]:9586.
    """
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsError(f"MetricsAddress {quote_value(text)}: expected HOST:PORT with a port from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise MetricsError(f"MetricsAddress {quote_value(text)}: the host must be an IP address") from None
    return host, int(port)


def _copy(read: Callable[[], Any]) -> Any:
    for _ in range(5):
        try:
            return read()
        except RuntimeError:  # changed size during the copy: the loop was editing it
            continue
    return read()


class TunnelCollector:
    def __init__(self, ifname: str, device, stats, families: list | None = None):
        self.ifname = ifname
        self.device = device
        self.stats = stats
        # Roles' services append functions yielding metric families (read at each scrape).
        self.families = families if families is not None else []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # optional: see start()

        labels = ["interface", "public_key", "allowed_ips", "friendly_name"]
        sent = CounterMetricFamily("wireguard_sent_bytes_total", "Bytes sent to the peer", labels=labels)
        received = CounterMetricFamily("wireguard_received_bytes_total", "Bytes received from the peer",
                                       labels=labels)
        latest = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                                   "UNIX time of the latest handshake with the peer", labels=labels)
        peers = _copy(lambda: list(self.device.peers.values()))
        handshakes = 0
        for peer in peers:
            allowed = _copy(lambda: self.device.allowed_ips.prefixes(peer))
            values = [self.ifname, encode_key(peer.public_key), ",".join(allowed), peer.name or ""]
            sent.add_metric(values, peer.tx_bytes)
            received.add_metric(values, peer.rx_bytes)
            last = peer.last_handshake
            latest.add_metric(values, int(self.device.wall(last)) if last is not None else 0)
            handshakes += getattr(peer, "handshakes_completed", 0)
        yield sent
        yield received
        yield latest

        s = self.stats
        iface = [self.ifname]
        packets = CounterMetricFamily("tunnel_packets_total", "Transport packets by direction",
                                      labels=["interface", "direction"])
        packets.add_metric(iface + ["rx"], s.rx_packets)
        packets.add_metric(iface + ["tx"], s.tx_packets)
        yield packets
        nbytes = CounterMetricFamily("tunnel_bytes_total", "Transport bytes on the wire by direction",
                                     labels=["interface", "direction"])
        nbytes.add_metric(iface + ["rx"], s.rx_bytes)
        nbytes.add_metric(iface + ["tx"], s.tx_bytes)
        yield nbytes
        drops = CounterMetricFamily("tunnel_drops_total", "Packets dropped, by reason", labels=["interface", "reason"])
        for reason, count in sorted(_copy(lambda: dict(s.drops)).items()):
            drops.add_metric(iface + [reason], count)
        yield drops
        hs = CounterMetricFamily("tunnel_handshakes_total", "Handshakes completed (all peers)", labels=["interface"])
        hs.add_metric(iface, handshakes)
        yield hs
        cookies = CounterMetricFamily("tunnel_cookie_replies_total", "Cookie replies sent under load",
                                      labels=["interface"])
        cookies.add_metric(iface, s.cookie_replies)
        yield cookies
        switches = CounterMetricFamily("tunnel_endpoint_switches", "Peers moved to another of their endpoints "
                                       "(fail-over and back)", labels=["interface"])
        switches.add_metric(iface, s.endpoint_switches)
        yield switches
        count = GaugeMetricFamily("tunnel_peers", "Configured peers", labels=["interface"])
        count.add_metric(iface, len(peers))
        yield count
        for family in list(self.families):
            try:
                yield from family()
            except Exception:  # noqa: BLE001 - one role's metrics must not break the scrape
                log.exception("%s: a metrics provider failed", self.ifname)


class MetricsServer:
    def __init__(self, httpd, thread):
        self.httpd = httpd
        self.thread = thread
        self.port = httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def check(address: str | None) -> None:
    """Raise MetricsError unless ADDRESS (MetricsAddress, if any) can be served: asked before bring-up."""
    if not address:
        return
    parse_address(address)
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise MetricsError("MetricsAddress needs the prometheus-client package (pip install 'tunnel[metrics]')")


def start(ifname: str, device, stats, address: str | tuple[str, int], families: list | None = None) -> MetricsServer:
    """Serve the metrics of one interface at ADDRESS ("HOST:PORT", or (host, port) where 0 picks one)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server  # optional package
    except ImportError:
        raise MetricsError("MetricsAddress needs the prometheus-client package "
                           "(pip install 'tunnel[metrics]')") from None

    host, port = parse_address(address) if isinstance(address, str) else address
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TunnelCollector(ifname, device, stats, families))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"MetricsAddress {_format(host, port)}: {exc.strerror or exc}") from None
    served = MetricsServer(httpd, thread)
    log.info("%s: metrics on http://%s/metrics", ifname, _format(host, served.port))
    return served


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def attach(interface) -> MetricsServer | None:
    """Start the endpoint if the config has MetricsAddress; None otherwise."""
    address = interface.config.interface.extension("MetricsAddress")
    if not address:
        return None
    return start(interface.name, interface.device, interface.plane.stats, address,
                 getattr(interface, "metric_families", None))
