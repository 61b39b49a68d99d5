"""wg-quick text to a Config: one pass over the lines, every mistake a ConfigError.

Rules kept here: pure (text in, dataclasses out); messages name the file,
the line and the key and never echo key material (see __init__.py).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import Callable

from ..protocol.crypto import KeyError_, decode_key
from .model import (
    MTU_MAX,
    MTU_MIN_IPV4,
    MTU_MIN_IPV6,
    Config,
    ConfigError,
    InterfaceConfig,
    IPAddress,
    IPInterface,
    PeerConfig,
)

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NAME_COMMENT = re.compile(r"#\s*name\s*=(.*)", re.IGNORECASE)
# Several endpoints of one peer, in a comment so wg-quick and the apps (which
# use the one `Endpoint =`) still load the file: see tunnel/failover.py.
_FAILOVER_COMMENT = re.compile(r"#\s*failoverendpoints\s*=(.*)", re.IGNORECASE)
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# --- value parsers: each takes the value text, returns the value or raises _Bad ---


# A run of base64 (or hex) characters long enough to be a key or a good part of
# one: a value holding one is described, never quoted. A long host name label
# is hidden too, a small price for a rule with no exceptions.
_SECRETISH = re.compile(r"[A-Za-z0-9+/]{20,}")
HIDDEN = "a value that may hold a key (not shown)"


def _looks_secret(text: str) -> bool:
    return _SECRETISH.search(text) is not None


def quote_value(text: str) -> str:
    """TEXT quoted for a message, or a description of it when it may be key material."""
    return HIDDEN if _looks_secret(text) else repr(text)


class _Bad(Exception):
    """What is wrong with one value; the caller adds file, line and key.

    `about_key` messages read as a predicate of the key ("PrivateKey is not a
    valid ...") because they must not quote the value; others follow "Key: ".
    """

    def __init__(self, message: str, about_key: bool = False):
        super().__init__(message)
        self.about_key = about_key


def _key(text: str) -> bytes:
    try:
        return decode_key(text)
    except KeyError_:
        raise _Bad("is not a valid base64 32-byte key", about_key=True) from None


def _uint(text: str, lo: int, hi: int, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Bad(f"{quote_value(text)} is not {what}")
    n = int(text)
    if not lo <= n <= hi:
        raise _Bad(f"{quote_value(text)} is not {what}")
    return n


def _ip_address(text: str) -> IPAddress:
    # ipaddress would accept an IPv6 scope (fe80::1%eth0); neither `ip` nor
    # wg takes one in an address or prefix.
    if "%" in text:
        raise ValueError(text)
    return ipaddress.ip_address(text)


# inet_pton is C and as strict as ipaddress on the forms configs hold (four
# decimal parts without leading zeros; RFC 4291 text): a server's file of
# 10,000 peers has 20,000 of them. Anything it refuses goes the slow way, which
# also words the error.
_FAMILIES = ((socket.AF_INET, IPv4Interface, 32), (socket.AF_INET6, IPv6Interface, 128))


def _fast_interface(addr_text: str, slash: str, prefix_text: str) -> IPInterface | None:
    if "%" in addr_text or not addr_text.isascii():
        return None
    family, cls, bits = _FAMILIES[":" in addr_text]
    try:
        packed = socket.inet_pton(family, addr_text)
    except OSError:
        return None
    plen = bits
    if slash:
        if not prefix_text.isdigit() or len(prefix_text) > 3 or int(prefix_text) > bits:
            return None
        plen = int(prefix_text)
    return cls((int.from_bytes(packed, "big"), plen))


def _ip_interface(text: str, what: str) -> IPInterface:
    """`addr` or `addr/prefix` with a numeric prefix; no netmask forms."""
    addr_text, slash, prefix_text = text.partition("/")
    fast = _fast_interface(addr_text, slash, prefix_text)
    if fast is not None:
        return fast
    try:
        addr = _ip_address(addr_text)
    except ValueError:
        raise _Bad(f"{quote_value(text)} is not {what}") from None
    if not slash:
        return ipaddress.ip_interface(addr)
    if not prefix_text.isascii() or not prefix_text.isdigit() or int(prefix_text) > addr.max_prefixlen:
        raise _Bad(f"{quote_value(text)} is not {what}")
    return ipaddress.ip_interface(f"{addr}/{int(prefix_text)}")


def _items(text: str) -> list[str]:
    """A comma (and/or space) separated list, as wg-quick splits it."""
    return [item for item in re.split(r"[,\s]+", text) if item]


def _hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def _host(text: str, host: str) -> str:
    # Quoted once only: when the whole value is hidden, so is its host.
    return "its host" if _looks_secret(text) else repr(host)


def _endpoint(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise _Bad(f"{quote_value(text)} has no closing ']'")
        if not rest.startswith(":"):
            raise _Bad(f"{quote_value(text)} has no port")
        port_text = rest[1:]
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            raise _Bad(f"{quote_value(text)}: {_host(text, host)} is not an IPv6 address") from None
        if mapped is not None:  # [::ffff:192.0.2.1] is an IPv4 peer: say so from the start
            host = str(mapped)
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _Bad(f"{quote_value(text)} has no port")
        if ":" in host:
            raise _Bad(f"{quote_value(text)}: write an IPv6 endpoint as [address]:port")
        if not _hostname(host):
            raise _Bad(f"{quote_value(text)}: {_host(text, host)} is neither an IP address nor a host name")
        if host.replace(".", "").isdigit():
            try:
                IPv4Address(host)
            except ValueError:
                raise _Bad(f"{quote_value(text)}: {_host(text, host)} is not an IPv4 address") from None
    try:
        return host, _uint(port_text, 1, 65535, "a port (1-65535)")
    except _Bad as bad:
        raise _Bad(f"{quote_value(text)}: {bad}") from None


def _fwmark(text: str) -> int:
    if text.lower() == "off":
        return 0
    # As wg: decimal, or hexadecimal after a lower-case "0x".
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        value = int(text[2:], 16)
    elif text.isascii() and text.isdigit():
        value = int(text)
    else:
        value = -1
    if not 0 <= value <= 0xFFFFFFFF:
        raise _Bad(f"{quote_value(text)} is neither off nor a number 0-0xffffffff")
    return value


def _keepalive(text: str) -> int:
    if text.lower() == "off":
        return 0
    return _uint(text, 0, 65535, "off or a number of seconds 0-65535")


def _table(text: str) -> str:
    low = text.lower()
    if low in ("off", "auto"):
        return low
    if text.isascii() and text.isdigit():
        return str(_uint(text, 0, 0xFFFFFFFF, "a table number"))
    if _TABLE_NAME.fullmatch(text):
        return text
    raise _Bad(f"{quote_value(text)} is neither off, auto, a number nor a table name")


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    raise _Bad(f"{quote_value(text)} is neither true nor false")


# --- the parser ---------------------------------------------------------------------


class _Parser:
    """One pass over the lines; holds the section being filled."""

    def __init__(self, filename: str):
        self.filename = filename
        self.section: str | None = None  # "interface" | "peer"
        self.iface: dict = {
            "addresses": [], "dns": [], "dns_search": [],
            "pre_up": [], "post_up": [], "pre_down": [], "post_down": [],
            "extensions": {},
        }
        self.private_key_seen = False
        self.mtu_line = 0
        self.peers: list[tuple[int, dict]] = []  # ([Peer] line, fields)
        self.public_key_lines: dict[bytes, int] = {}
        self.warnings: list[str] = []
        self.lineno = 0

    def fail(self, message: str, line: int | None = -1) -> ConfigError:
        return ConfigError(self.filename, self.lineno if line == -1 else line, message)

    # Interface keys: lower-case key -> handler(value).
    def _interface_handlers(self) -> dict[str, Callable[[str], None]]:
        f = self.iface

        def private_key(v: str) -> None:
            f["private_key"] = _key(v)

        def listen_port(v: str) -> None:
            f["listen_port"] = _uint(v, 0, 65535, "a port (0-65535)")

        def fwmark(v: str) -> None:
            f["fwmark"] = _fwmark(v)

        def address(v: str) -> None:
            f["addresses"] += [_ip_interface(item, "an IP address with optional /prefix") for item in _items(v)]

        def dns(v: str) -> None:
            for item in _items(v):
                # wg-quick's rule: digits and dots, or any colon, is an address;
                # anything else is a search domain.
                if re.fullmatch(r"[0-9.]+", item) or ":" in item:
                    try:
                        f["dns"].append(_ip_address(item))
                    except ValueError:
                        raise _Bad(f"{quote_value(item)} is not an IP address") from None
                elif _hostname(item):
                    f["dns_search"].append(item)
                else:
                    raise _Bad(f"{quote_value(item)} is neither an IP address nor a search domain")

        def mtu(v: str) -> None:
            f["mtu"] = _uint(v, 0, 1 << 32, "a number")
            self.mtu_line = self.lineno

        def table(v: str) -> None:
            f["table"] = _table(v)

        def hook(name: str) -> Callable[[str], None]:
            return lambda v: f[name].append(v)

        def save_config(v: str) -> None:
            f["save_config"] = _bool(v)
            if f["save_config"]:
                self.warnings.append(
                    f"{self.filename}:{self.lineno}: SaveConfig is not supported; the file is never rewritten"
                )

        return {
            "privatekey": private_key, "listenport": listen_port, "fwmark": fwmark,
            "address": address, "dns": dns, "mtu": mtu, "table": table,
            "preup": hook("pre_up"), "postup": hook("post_up"),
            "predown": hook("pre_down"), "postdown": hook("post_down"),
            "saveconfig": save_config,
        }

    def _peer_handlers(self, f: dict) -> dict[str, Callable[[str], None]]:
        def public_key(v: str) -> None:
            if "public_key" in f:
                raise _Bad("given twice in one [Peer] (is a [Peer] line missing?)", about_key=True)
            key = _key(v)
            first = self.public_key_lines.get(key)
            if first is not None:
                raise _Bad(f"is the same as the peer's at line {first}", about_key=True)
            self.public_key_lines[key] = self.lineno
            f["public_key"] = key
            f["public_key_line"] = self.lineno

        def preshared_key(v: str) -> None:
            f["preshared_key"] = _key(v)

        def allowed_ips(v: str) -> None:
            for item in _items(v):
                iface = _ip_interface(item, "an IP network")
                if iface.ip != iface.network.network_address:
                    self.warnings.append(
                        f"{self.filename}:{self.lineno}: AllowedIPs: {item} has host bits set; "
                        f"it routes {iface.network}"
                    )
                f["allowed_ips"].append(iface)

        def endpoint(v: str) -> None:
            f["endpoint"] = _endpoint(v)

        def keepalive(v: str) -> None:
            f["persistent_keepalive"] = _keepalive(v)

        return {
            "publickey": public_key, "presharedkey": preshared_key, "allowedips": allowed_ips,
            "endpoint": endpoint, "persistentkeepalive": keepalive,
        }

    def parse(self, text: str) -> Config:
        iface_handlers = self._interface_handlers()
        interface_keys = set(iface_handlers)
        peer_keys = {"publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive"}
        peer_handlers: dict[str, Callable[[str], None]] = {}
        peer: dict | None = None
        canonical = {
            "privatekey": "PrivateKey", "listenport": "ListenPort", "fwmark": "FwMark",
            "address": "Address", "dns": "DNS", "mtu": "MTU", "table": "Table",
            "preup": "PreUp", "postup": "PostUp", "predown": "PreDown", "postdown": "PostDown",
            "saveconfig": "SaveConfig", "publickey": "PublicKey", "presharedkey": "PresharedKey",
            "allowedips": "AllowedIPs", "endpoint": "Endpoint", "persistentkeepalive": "PersistentKeepalive",
        }

        for self.lineno, raw in enumerate(text.splitlines(), start=1):
            stripped = raw.strip()
            if stripped.startswith("#"):
                m = _NAME_COMMENT.fullmatch(stripped)
                if m and peer is not None:
                    name = m.group(1).strip()
                    if name:
                        peer["name"] = name
                m = _FAILOVER_COMMENT.fullmatch(stripped)
                if m and peer is not None:
                    try:
                        peer.setdefault("failover_endpoints", []).extend(
                            _endpoint(item) for item in _items(m.group(1).strip()))
                    except _Bad as bad:
                        raise self.fail(f"FailoverEndpoints: {bad}") from None
                    peer["failover_line"] = self.lineno
                continue
            content = raw.split("#", 1)[0].strip()
            if not content:
                continue
            if content.startswith("["):
                header = re.sub(r"\s+", "", content).lower()
                if header == "[interface]":
                    self.section, peer = "interface", None
                elif header == "[peer]":
                    self.section = "peer"
                    peer = {"allowed_ips": [], "extensions": {}}
                    self.peers.append((self.lineno, peer))
                    peer_handlers = self._peer_handlers(peer)
                else:
                    raise self.fail(f"unknown section {quote_value(content)}; expected [Interface] or [Peer]")
                continue
            key, eq, value = content.partition("=")
            key, value = key.strip(), value.strip()
            low = key.lower()
            known = low in interface_keys or low in peer_keys or low in InterfaceConfig.EXTENSION_KEYS \
                or low in PeerConfig.EXTENSION_KEYS
            if not known and _looks_secret(key):
                # A base64 key on a line of its own ends in '=' and would read as
                # its own key name: say so without quoting it.
                raise self.fail("this line holds what looks like a key where a name should be (not shown); "
                                "expected 'Key = Value' (is 'PrivateKey =' or 'PublicKey =' missing?)")
            if not eq or not key:
                # Not echoed: a stray line may well be a pasted key.
                raise self.fail("expected 'Key = Value', [Interface] or [Peer]")
            if self.section is None:
                raise self.fail(f"{HIDDEN if _looks_secret(key) else key} comes before any [Interface] or [Peer] section")
            if self.section == "interface":
                handlers, ext, target, here, there = (
                    iface_handlers, InterfaceConfig.EXTENSION_KEYS, self.iface, "[Interface]", "[Peer]")
                elsewhere = peer_keys
            else:
                handlers, ext, target, here, there = (
                    peer_handlers, PeerConfig.EXTENSION_KEYS, peer, "[Peer]", "[Interface]")
                elsewhere = interface_keys
            name = canonical.get(low, key)
            if low in handlers:
                multi = low in ("address", "dns", "allowedips", "preup", "postup", "predown", "postdown")
                if not value and not multi:
                    raise self.fail(f"{name}: empty value")
                try:
                    handlers[low](value)
                except _Bad as bad:
                    raise self.fail(f"{name} {bad}" if bad.about_key else f"{name}: {bad}") from None
                if low == "privatekey":
                    self.private_key_seen = True
            elif low in ext:
                target["extensions"].setdefault(ext[low], []).append(value)
            elif low in elsewhere:
                raise self.fail(f"{name} belongs in {there}, not in {here}")
            else:
                raise self.fail(f"unknown key {quote_value(key)} in {here}")

        return self._finish()

    def _finish(self) -> Config:
        f = self.iface
        if not self.private_key_seen:
            raise self.fail("[Interface] has no PrivateKey", line=None)
        iface = InterfaceConfig(**{k: v for k, v in f.items()})
        if iface.mtu is not None:
            has_v6 = any(a.version == 6 for a in iface.addresses)
            lo = MTU_MIN_IPV6 if has_v6 else MTU_MIN_IPV4
            if not lo <= iface.mtu <= MTU_MAX:
                why = " (an IPv6 Address needs at least 1280)" if has_v6 else ""
                raise self.fail(f"MTU {iface.mtu} is out of range {lo}-{MTU_MAX}{why}", line=self.mtu_line)
        own = iface.public_key
        peers = []
        for header_line, p in self.peers:
            if "public_key" not in p:
                raise self.fail("[Peer] has no PublicKey", line=header_line)
            if p["public_key"] == own:
                raise self.fail("PublicKey is the interface's own public key", line=p["public_key_line"])
            del p["public_key_line"]
            failover_line = p.pop("failover_line", None)
            if failover_line is not None and "endpoint" not in p:
                raise self.fail("FailoverEndpoints needs an Endpoint in the same [Peer] (tried first)",
                                line=failover_line)
            peers.append(PeerConfig(**p))
        return Config(interface=iface, peers=peers, warnings=self.warnings)


def parse_config(text: str, filename: str = "<config>", name: str | None = None) -> Config:
    """Parse wg-quick text; `filename` is used in messages, `name` becomes Config.name."""
    config = _Parser(filename).parse(text)
    config.name = name
    return config
