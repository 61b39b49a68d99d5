"""WireGuard's cross-platform userspace API (the text protocol of `wg` and wireguard-go).

A request is lines of `key=value` ending with an empty line:
    get=1            -> the interface and its peers, then `errno=0`
    set=1 ...        -> changes, answered `errno=0` or `errno=-N`
    get=tunnel       -> our extension: one `json=` line (peer names, interface
                        counters, drops), then `errno=0`; `wg` never sends it.
                        Followed by `public_key=HEX` lines, only those peers
                        (a question about one peer of 10,000 costs one).

Rules kept here:
- pure: text and a Context in, text out (but for the interface index of a
  link-local endpoint's scope name); the control socket does the I/O
  and the caller's clock gives `now`;
- a set request is parsed and checked whole before anything changes, so a
  bad line leaves the running interface exactly as it was;
- errno in a set answer is negative, as wireguard-go writes it: Debian's
  `wg` turns `errno=-22` into "Invalid argument" (it negates the value);
- the private key, listen port and fwmark change while running when the
  interface hands in how (`Context.live`: tunnel-wg, as wireguard-go); an
  interface that does not (`tunnel up`, whose config, routes and kill switch
  were made for them) accepts them unchanged (`wg setconf`/`syncconf` always
  send them) and refuses a change with EOPNOTSUPP;
- an all-zero private key means none (`wg set private-key /dev/null`); a
  private key is shown clamped, as X25519 uses it (as wg does);
- a peer with the interface's own public key is ignored, as WireGuard does;
- 130,000 allowed IPs in one request take well under a second each way:
  prefixes are parsed with inet_pton, not ipaddress, and handed to the
  table parsed;
- keys are hex on this wire; no key is ever logged.
"""

from __future__ import annotations

import errno as E
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from .protocol.constants import KEY_LEN
from .protocol.crypto import clamp, encode_key
from .resolve import EndpointResolutionError, endpoint_tuple, format_endpoint, scope_index

log = logging.getLogger("tunnel")

MAX_KEEPALIVE = 65535


class UapiError(Exception):
    """A request we refuse; `errno` is the positive errno value."""

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno


@dataclass
class Live:
    """How a running interface moves its sockets: to a new port, to a new fwmark (wireguard-go's bind)."""

    rebind: Callable[[int], int]  # port (0: any) -> the port now bound; OSError changes nothing
    set_fwmark: Callable[[int], None]


@dataclass
class Context:
    """What a request may read and change: the running interface's pieces."""

    device: Any  # tunnel.protocol.Device
    private_key: bytes | None = field(repr=False)  # None: the interface has none yet
    listen_port: int
    fwmark: int  # 0: off
    now: Callable[[], float]  # monotonic clock, as the data plane's
    perform: Callable[[list, float], None] = lambda actions, now: None
    stats: Any = None  # the data plane's Stats, for get=tunnel
    name: str = ""
    extra: Callable[[], dict] | None = None  # what roles add to get=tunnel (Interface.status_providers)
    # Private key, listen port and fwmark may change while running (None: refused).
    live: Live | None = None


# --- get ----------------------------------------------------------------------------


def _handshake_time(ctx: Context, peer) -> tuple[int, int]:
    if peer.last_handshake is None:
        return 0, 0
    wall = ctx.device.wall(peer.last_handshake)
    sec = int(wall)
    return sec, int((wall - sec) * 1e9)


def format_prefix(version: int, plen: int, key: int) -> str:
    """A (version, prefix length, key) triple of AllowedIPs as text (inet_ntop: ipaddress is 10x slower)."""
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, (key << (32 - plen)).to_bytes(4, 'big'))}/{plen}"
    return f"{socket.inet_ntop(socket.AF_INET6, (key << (128 - plen)).to_bytes(16, 'big'))}/{plen}"


def format_get(ctx: Context) -> str:
    device = ctx.device
    lines = [] if ctx.private_key is None else [f"private_key={ctx.private_key.hex()}"]
    lines.append(f"listen_port={ctx.listen_port}")
    if ctx.fwmark:
        lines.append(f"fwmark={ctx.fwmark}")
    for peer in list(device.peers.values()):
        lines.append(f"public_key={peer.public_key.hex()}")
        psk = peer.handshake.preshared_key
        if any(psk):
            lines.append(f"preshared_key={psk.hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        sec, nsec = _handshake_time(ctx, peer)
        lines += [
            f"last_handshake_time_sec={sec}",
            f"last_handshake_time_nsec={nsec}",
            f"tx_bytes={peer.tx_bytes}",
            f"rx_bytes={peer.rx_bytes}",
            f"persistent_keepalive_interval={peer.persistent_keepalive or 0}",
        ]
        lines += [f"allowed_ip={format_prefix(*e)}" for e in device.allowed_ips.entries(peer)]
    return "\n".join(lines) + "\nerrno=0\n\n"


def extended_status(ctx: Context, keys: list[bytes] | None = None) -> dict:
    """Everything `tunnel show` prints, as plain JSON-able data (public keys in base64).

    With KEYS, only those peers (the ones configured: an unknown key is left out).
    """
    device = ctx.device
    peers = []
    chosen = list(device.peers.values()) if keys is None else [device.peers[k] for k in keys if k in device.peers]
    for peer in chosen:
        sec, _ = _handshake_time(ctx, peer)
        peers.append({
            "public_key": encode_key(peer.public_key),
            "name": peer.name,
            "endpoint": format_endpoint(peer.endpoint) if peer.endpoint is not None else None,
            "allowed_ips": device.allowed_ips.prefixes(peer),
            "latest_handshake": sec,
            "rx_bytes": peer.rx_bytes,
            "tx_bytes": peer.tx_bytes,
            "persistent_keepalive": peer.persistent_keepalive or 0,
            "handshakes": getattr(peer, "handshakes_completed", 0),
        })
    stats = ctx.stats
    counters: dict[str, Any] = {}
    if stats is not None:
        for key in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "cookie_replies",
                    "handshakes_queued_max", "tun_writes", "udp_sends", "endpoint_switches"):
            counters[key] = getattr(stats, key, 0)
        counters["drops"] = dict(stats.drops)
    counters["handshakes"] = sum(getattr(p, "handshakes_completed", 0) for p in list(device.peers.values()))
    extra = {}
    if ctx.extra is not None:
        extra = ctx.extra()
    return {
        "extra": extra,
        "interface": ctx.name,
        "public_key": encode_key(device.public_key) if device.public_key is not None else None,
        "listen_port": ctx.listen_port,
        "fwmark": ctx.fwmark,
        "mtu": device.mtu,
        "peers": peers,
        "counters": counters,
    }


# --- set ----------------------------------------------------------------------------


_UNSET: Any = object()


@dataclass
class PeerChange:
    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: Any = field(default=_UNSET, repr=False)  # bytes (all zero: none)
    endpoint: Any = _UNSET  # socket-address tuple
    keepalive: Any = _UNSET  # int
    replace_allowed_ips: bool = False
    allowed_ips: list = field(default_factory=list)  # prefix strings, or triples as _prefix gives
    name: Any = _UNSET  # our extension: `name=` after public_key


@dataclass
class SetRequest:
    private_key: Any = field(default=_UNSET, repr=False)
    listen_port: Any = _UNSET
    fwmark: Any = _UNSET
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def _hex_key(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != KEY_LEN or len(value) != 2 * KEY_LEN:
        raise UapiError(E.EINVAL, f"{what} is not 64 hex digits")
    return raw


def _uint(value: str, hi: int, what: str) -> int:
    if not value.isdigit() or int(value) > hi:
        raise UapiError(E.EINVAL, f"{what} must be a number from 0 to {hi}")
    return int(value)


def _true(value: str, what: str) -> bool:
    if value != "true":
        raise UapiError(E.EINVAL, f"{what} only takes 'true'")
    return True


def parse_endpoint(value: str) -> tuple:
    """`1.2.3.4:51820`, `[fd00::1]:51820` or `[fe80::1%eth0]:51820` (numeric, as wg sends) to a
    socket address; a v4-mapped address becomes IPv4, a scope name its interface index."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UapiError(E.EINVAL, "endpoint must be IP:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    scope = 0
    if "%" in host:
        host, _, zone = host.partition("%")
        try:
            scope = scope_index(zone)
        except EndpointResolutionError as exc:
            raise UapiError(E.EINVAL, f"endpoint: {exc}") from None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UapiError(E.EINVAL, "endpoint host must be a numeric IP address") from None
    if addr.version == 4:
        return (str(addr), int(port))
    return endpoint_tuple((str(addr), int(port), 0, scope))


def _prefix(value: str) -> tuple[int, int, int]:
    """An allowed IP as the (version, prefix length, key) triple AllowedIPs stores (host bits cleared)."""
    addr, sep, length = value.partition("/")
    if length.isdigit() and len(length) <= 3:
        try:
            if ":" in addr:
                version, bits, raw = 6, 128, socket.inet_pton(socket.AF_INET6, addr)
            else:
                version, bits, raw = 4, 32, socket.inet_pton(socket.AF_INET, addr)
        except OSError:
            pass
        else:
            plen = int(length)
            if plen <= bits:
                return version, plen, int.from_bytes(raw, "big") >> (bits - plen)
    try:  # what inet_pton does not take (no length, odd forms), or the error
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UapiError(E.EINVAL, "allowed_ip must be an IP prefix") from None
    bits = net.max_prefixlen
    return net.version, net.prefixlen, int(net.network_address) >> (bits - net.prefixlen)


def parse_set(lines: list[str]) -> SetRequest:
    """The key=value lines after `set=1` (without the final empty line)."""
    req = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(E.EPROTO, "a line without '='")
        if key == "public_key":
            peer = PeerChange(_hex_key(value, "public_key"))
            req.peers.append(peer)
        elif peer is None:
            if key == "private_key":
                raw = _hex_key(value, "private_key")
                req.private_key = raw if any(raw) else None
            elif key == "listen_port":
                req.listen_port = _uint(value, 65535, "listen_port")
            elif key == "fwmark":
                req.fwmark = _uint(value, 0xFFFFFFFF, "fwmark")
            elif key == "replace_peers":
                req.replace_peers = _true(value, key)
            else:
                raise UapiError(E.EINVAL, f"unknown interface key {key!r}")
        elif key == "remove":
            peer.remove = _true(value, key)
        elif key == "update_only":
            peer.update_only = _true(value, key)
        elif key == "preshared_key":
            peer.preshared_key = _hex_key(value, "preshared_key")
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.keepalive = _uint(value, MAX_KEEPALIVE, key)
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _true(value, key)
        elif key == "allowed_ip":
            peer.allowed_ips.append(_prefix(value))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(E.EINVAL, "only protocol_version=1 exists")
        elif key == "name":
            if not value or len(value) > 64 or not value.isprintable():
                raise UapiError(E.EINVAL, "name must be 1-64 printable characters")
            peer.name = value
        else:
            raise UapiError(E.EINVAL, f"unknown peer key {key!r}")
    return req


def _check(req: SetRequest, ctx: Context) -> None:
    """Refuse, before any change, what this interface cannot do while running."""
    if ctx.live is not None:
        return
    if req.private_key is not _UNSET and req.private_key != ctx.private_key:
        raise UapiError(E.EOPNOTSUPP, "the private key cannot change while running (restart with the new config)")
    if req.listen_port is not _UNSET and req.listen_port != ctx.listen_port:
        raise UapiError(E.EOPNOTSUPP, "the listen port cannot change while running")
    if req.fwmark is not _UNSET and req.fwmark != (ctx.fwmark or 0):
        raise UapiError(E.EOPNOTSUPP, "the fwmark cannot change while running")


def _apply_interface(req: SetRequest, ctx: Context, now: float) -> None:
    """Listen port first (the one change that can fail), then fwmark, then the private key."""
    live = ctx.live
    if live is None:
        return
    if req.listen_port is not _UNSET and req.listen_port != ctx.listen_port:
        try:
            ctx.listen_port = live.rebind(req.listen_port)
        except OSError as exc:
            raise UapiError(exc.errno or E.EIO, f"cannot listen on port {req.listen_port}: {exc.strerror or exc}") from None
        log.info("%s: listening on UDP port %d", ctx.name or "interface", ctx.listen_port)
    if req.fwmark is not _UNSET and req.fwmark != ctx.fwmark:
        live.set_fwmark(req.fwmark)
        ctx.fwmark = req.fwmark
    if req.private_key is not _UNSET:
        wanted = None if req.private_key is None else clamp(req.private_key)
        if wanted != ctx.private_key:
            for peer in ctx.device.set_private_key(req.private_key, now):
                log.info("peer %s: removed, its public key is the interface's own now", _label(peer))
            ctx.private_key = ctx.device.private_key
            log.info("%s: %s", ctx.name or "interface",
                     "private key removed" if ctx.private_key is None else "private key changed")


def apply_set(req: SetRequest, ctx: Context) -> None:
    _check(req, ctx)
    device = ctx.device
    now = ctx.now()
    _apply_interface(req, ctx, now)
    own = device.public_key
    # WireGuard ignores a peer with the interface's own public key, without an error.
    changes = [c for c in req.peers if own is None or c.public_key != own]
    if req.replace_peers:
        keep = {c.public_key for c in changes if not c.remove}
        for key in [k for k in device.peers if k not in keep]:
            _log_removed(device.remove_peer(key))
    for change in changes:
        peer = device.peers.get(change.public_key)
        if change.remove:
            if peer is not None:
                _log_removed(device.remove_peer(change.public_key))
            continue
        if peer is None and change.update_only:
            continue
        fresh = peer is None or req.replace_peers
        if peer is None:
            psk = change.preshared_key if change.preshared_key is not _UNSET else None
            peer = device.add_peer(
                change.public_key,
                preshared_key=psk if psk and any(psk) else None,
                endpoint=change.endpoint if change.endpoint is not _UNSET else None,
                name=change.name if change.name is not _UNSET else None,
            )
            added = True
        else:
            added = False
            if change.preshared_key is not _UNSET or fresh:
                psk = change.preshared_key if change.preshared_key is not _UNSET else bytes(KEY_LEN)
                peer.handshake.preshared_key = psk
            if change.endpoint is not _UNSET:
                peer.endpoint = change.endpoint
            if change.name is not _UNSET:
                peer.name = change.name
        if change.replace_allowed_ips or (fresh and not added):
            device.allowed_ips.remove_value(peer)
        insert = device.allowed_ips.insert
        for net in change.allowed_ips:
            insert(net, peer)
        keepalive = change.keepalive if change.keepalive is not _UNSET else (0 if fresh else None)
        if keepalive is not None and keepalive != peer.persistent_keepalive:
            if peer.endpoint is None:
                peer.persistent_keepalive = keepalive
            else:
                ctx.perform(device.set_persistent_keepalive(peer, keepalive, now), now)
        if added:
            entries = device.allowed_ips.entries(peer)
            shown = ", ".join(format_prefix(*e) for e in entries[:8]) or "(none)"
            if len(entries) > 8:
                shown += f" and {len(entries) - 8} more"
            log.info("peer %s: added, allowed IPs %s", _label(peer), shown)


def _label(peer) -> str:
    if peer.name:
        return peer.name
    return encode_key(peer.public_key)[:8] + "…"


def _log_removed(peer) -> None:
    log.info("peer %s: removed, its sessions ended", _label(peer))


# --- one request --------------------------------------------------------------------


def handle(request: str, ctx: Context) -> str:
    """Answer one request (its text up to and without the final empty line)."""
    lines = request.split("\n")
    command = lines[0]
    if command == "get=1":
        if len(lines) > 1 and any(lines[1:]):
            return f"errno={E.EINVAL}\n\n"
        return format_get(ctx)
    if command == "get=tunnel":
        try:
            keys = [_hex_key(v, "public_key") for k, _, v in (x.partition("=") for x in lines[1:] if x)
                    if k == "public_key"] if len(lines) > 1 else None
        except UapiError as exc:
            return f"errno=-{exc.errno}\n\n"
        status = extended_status(ctx, keys or None)
        return "json=" + json.dumps(status, separators=(",", ":")) + "\nerrno=0\n\n"
    if command == "set=1":
        try:
            apply_set(parse_set([line for line in lines[1:] if line]), ctx)
        except UapiError as exc:
            log.warning("%s: refused a configuration change: %s", ctx.name or "control", exc)
            return f"errno=-{exc.errno}\n\n"
        return "errno=0\n\n"
    return f"errno=-{E.EINVAL}\n\n"
