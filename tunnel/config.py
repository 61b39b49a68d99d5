"""wg-quick configuration files: parse, check, write back, strip to `wg setconf`.

The format is wg-quick(8)'s, unchanged: an [Interface] section and any number
of [Peer] sections, `Key = Value` lines, keys matched case-insensitively,
everything from `#` to the end of a line a comment (inside values too, as
wg-quick and wg do), blank lines ignored.

Rules kept here:
- parsing is pure: text in, dataclasses out. No name is resolved (an Endpoint
  stays (host, port); `resolve_endpoint` does the I/O, for the daemons to call)
  and no file is touched except by `load_config`.
- every mistake raises ConfigError naming the file, the line and the key;
  messages never contain key material (a bad key is described, not echoed).
- repeatable keys (Address, DNS, AllowedIPs, the hooks) accumulate in order;
  any other key given twice keeps the last value, as wg-quick does, except a
  second PublicKey in one [Peer], which is almost surely a lost [Peer] line.
- unknown keys are errors, except our own extensions: the keys listed in
  InterfaceConfig.EXTENSION_KEYS / PeerConfig.EXTENSION_KEYS (wg-quick would
  pass such keys to `wg`, which refuses them, so files using them are ours).
  Their raw values land in `.extensions[CanonicalName]` (a list, in order).
  A comment line `# Name = alice` inside a [Peer] names that peer.
- `Config.to_text()` writes a file that parses back to an equal Config;
  `Config.strip_wg_quick()` keeps only what `wg setconf` accepts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Callable, ClassVar

from tunnel.protocol.crypto import DH_PUBKEY, KeyError_, decode_key, encode_key
from tunnel.secrets import InsecureFileError, read_private_file

__all__ = [
    "ConfigError",
    "EndpointResolutionError",
    "InterfaceConfig",
    "PeerConfig",
    "Config",
    "parse_config",
    "load_config",
    "interface_name_from_path",
    "resolve_endpoint",
    "MTU_MIN_IPV4",
    "MTU_MIN_IPV6",
    "MTU_MAX",
]

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

MTU_MIN_IPV4 = 576  # RFC 791: every IPv4 host must accept this
MTU_MIN_IPV6 = 1280  # RFC 8200: Linux disables IPv6 on a link below this
MTU_MAX = 65535

_INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NAME_COMMENT = re.compile(r"#\s*name\s*=(.*)", re.IGNORECASE)
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(ValueError):
    """A configuration file we refuse; str() is `file:line: what is wrong`."""

    def __init__(self, filename: str, line: int | None, message: str, text: str | None = None):
        self.filename = filename
        self.line = line
        self.message = message
        where = f"{filename}:{line}" if line is not None else filename
        # `text` replaces the usual form when the message already names the file.
        super().__init__(text or f"{where}: {message}")


class EndpointResolutionError(OSError):
    """An Endpoint host name that did not resolve to an IPv4 or IPv6 address."""


# --- the model ------------------------------------------------------------------


@dataclass
class InterfaceConfig:
    """The [Interface] section. None means "not given" (wg-quick's default applies)."""

    # Our own keys, lower case -> spelling used when writing. Later features add
    # theirs here (e.g. "killswitch": "KillSwitch"); wg-quick never sees them.
    EXTENSION_KEYS: ClassVar[dict[str, str]] = {
        "killswitch": "KillSwitch",  # on/off; default on for full-tunnel configs
        "metricsaddress": "MetricsAddress",  # host:port of the Prometheus endpoint
    }

    private_key: bytes = field(repr=False)
    listen_port: int | None = None  # 0: the kernel picks one
    fwmark: int | None = None  # 0: off
    addresses: list[IPInterface] = field(default_factory=list)
    dns: list[IPAddress] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None  # "off", "auto", a number in decimal, or a table name
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False  # accepted; we never rewrite the file on shutdown
    extensions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def public_key(self) -> bytes:
        return DH_PUBKEY(self.private_key)

    def extension(self, name: str) -> str | None:
        """The last value of extension key `name` (canonical spelling), or None."""
        values = self.extensions.get(name)
        return values[-1] if values else None


@dataclass
class PeerConfig:
    """One [Peer] section."""

    EXTENSION_KEYS: ClassVar[dict[str, str]] = {}

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: list[IPInterface] = field(default_factory=list)  # as written, host bits kept
    endpoint: tuple[str, int] | None = None  # (host unresolved, port); IPv6 without brackets
    persistent_keepalive: int | None = None  # seconds; 0: off
    name: str | None = None  # from a `# Name = ...` comment
    extensions: dict[str, list[str]] = field(default_factory=dict)

    def allowed_networks(self) -> list[IPNetwork]:
        """AllowedIPs with host bits cleared, duplicates dropped, order kept: what routing uses."""
        seen: dict[IPNetwork, None] = {}
        for iface in self.allowed_ips:
            seen.setdefault(iface.network, None)
        return list(seen)

    def extension(self, name: str) -> str | None:
        values = self.extensions.get(name)
        return values[-1] if values else None


@dataclass
class Config:
    interface: InterfaceConfig
    peers: list[PeerConfig] = field(default_factory=list)
    name: str | None = None  # interface name, from the file name
    # Things accepted but worth telling the user (e.g. SaveConfig is ignored).
    warnings: list[str] = field(default_factory=list, compare=False)

    def peer(self, public_key: bytes) -> PeerConfig | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def to_text(self) -> str:
        """The file, in wg-quick format; parse_config(to_text()) == self."""
        return _write(self)

    def strip_wg_quick(self) -> Config:
        """A copy holding only what `wg setconf` understands, like `wg-quick strip`."""
        i = self.interface
        iface = InterfaceConfig(private_key=i.private_key, listen_port=i.listen_port, fwmark=i.fwmark)
        peers = [
            PeerConfig(
                public_key=p.public_key,
                preshared_key=p.preshared_key,
                allowed_ips=list(p.allowed_ips),
                endpoint=p.endpoint,
                persistent_keepalive=p.persistent_keepalive,
            )
            for p in self.peers
        ]
        return Config(interface=iface, peers=peers, name=self.name)

    def to_setconf_text(self) -> str:
        """The text `wg setconf` accepts: strip_wg_quick().to_text()."""
        return self.strip_wg_quick().to_text()


# --- value parsers: each takes the value text, returns the value or raises _Bad ---


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
        raise _Bad(f"{text!r} is not {what}")
    n = int(text)
    if not lo <= n <= hi:
        raise _Bad(f"{text!r} is not {what}")
    return n


def _ip_address(text: str) -> IPAddress:
    # ipaddress would accept an IPv6 scope (fe80::1%eth0); neither `ip` nor
    # wg takes one in an address or prefix.
    if "%" in text:
        raise ValueError(text)
    return ipaddress.ip_address(text)


def _ip_interface(text: str, what: str) -> IPInterface:
    """`addr` or `addr/prefix` with a numeric prefix; no netmask forms."""
    addr_text, slash, prefix_text = text.partition("/")
    try:
        addr = _ip_address(addr_text)
    except ValueError:
        raise _Bad(f"{text!r} is not {what}") from None
    if not slash:
        return ipaddress.ip_interface(addr)
    if not prefix_text.isascii() or not prefix_text.isdigit() or int(prefix_text) > addr.max_prefixlen:
        raise _Bad(f"{text!r} is not {what}")
    return ipaddress.ip_interface(f"{addr}/{int(prefix_text)}")


def _items(text: str) -> list[str]:
    """A comma (and/or space) separated list, as wg-quick splits it."""
    return [item for item in re.split(r"[,\s]+", text) if item]


def _hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def _endpoint(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise _Bad(f"{text!r} has no closing ']'")
        if not rest.startswith(":"):
            raise _Bad(f"{text!r} has no port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _Bad(f"{text!r} has no port")
        if ":" in host:
            raise _Bad(f"{text!r}: write an IPv6 endpoint as [address]:port")
        if not _hostname(host):
            raise _Bad(f"{text!r}: {host!r} is neither an IP address nor a host name")
        if host.replace(".", "").isdigit():
            try:
                IPv4Address(host)
            except ValueError:
                raise _Bad(f"{text!r}: {host!r} is not an IPv4 address") from None
    try:
        return host, _uint(port_text, 1, 65535, "a port (1-65535)")
    except _Bad as bad:
        raise _Bad(f"{text!r}: {bad}") from None


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
        raise _Bad(f"{text!r} is neither off nor a number 0-0xffffffff")
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
    raise _Bad(f"{text!r} is neither off, auto, a number nor a table name")


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    raise _Bad(f"{text!r} is neither true nor false")


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
                        raise _Bad(f"{item!r} is not an IP address") from None
                elif _hostname(item):
                    f["dns_search"].append(item)
                else:
                    raise _Bad(f"{item!r} is neither an IP address nor a search domain")

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
                    raise self.fail(f"unknown section {content!r}; expected [Interface] or [Peer]")
                continue
            key, eq, value = content.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                # Not echoed: a stray line may well be a pasted key.
                raise self.fail("expected 'Key = Value', [Interface] or [Peer]")
            low = key.lower()
            if self.section is None:
                raise self.fail(f"{key} comes before any [Interface] or [Peer] section")
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
                raise self.fail(f"unknown key {key!r} in {here}")

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
            peers.append(PeerConfig(**p))
        return Config(interface=iface, peers=peers, warnings=self.warnings)


def parse_config(text: str, filename: str = "<config>", name: str | None = None) -> Config:
    """Parse wg-quick text; `filename` is used in messages, `name` becomes Config.name."""
    config = _Parser(filename).parse(text)
    config.name = name
    return config


def interface_name_from_path(path: str | os.PathLike) -> str:
    """The interface name wg-quick derives from a file name: `wg0.conf` -> `wg0`."""
    base = os.path.basename(os.fspath(path))
    stem, dot, ext = base.rpartition(".")
    if not dot or ext != "conf" or not _INTERFACE_NAME.fullmatch(stem):
        raise ConfigError(
            os.fspath(path), None,
            "the file name must be an interface name (1-15 of a-z A-Z 0-9 _ = + . -) followed by .conf",
        )
    return stem


def load_config(path: str | os.PathLike) -> Config:
    """Read, check and parse a private wg-quick file. Raises ConfigError only."""
    filename = os.fspath(path)
    name = interface_name_from_path(filename)
    try:
        data = read_private_file(filename)
    except InsecureFileError as e:
        raise ConfigError(filename, None, str(e), text=str(e)) from None
    except OSError as e:
        raise ConfigError(filename, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(filename, data.count(b"\n", 0, e.start) + 1, "not UTF-8 text") from None
    return parse_config(text, filename=filename, name=name)


# --- the writer -----------------------------------------------------------------------


def _check_value(key: str, value: str) -> str:
    # A newline would start a new line and a '#' would silently cut the value
    # when read back: refuse to write either.
    if "\n" in value or "\r" in value or "#" in value:
        raise ValueError(f"{key}: a value cannot contain a newline or '#'")
    return value


def _format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write(config: Config) -> str:
    i = config.interface
    lines = ["[Interface]", f"PrivateKey = {encode_key(i.private_key)}"]
    if i.listen_port is not None:
        lines.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        lines.append(f"FwMark = {hex(i.fwmark) if i.fwmark else 'off'}")
    if i.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in i.addresses))
    if i.dns or i.dns_search:
        lines.append("DNS = " + ", ".join([str(a) for a in i.dns] + [_check_value("DNS", d) for d in i.dns_search]))
    if i.mtu is not None:
        lines.append(f"MTU = {i.mtu}")
    if i.table is not None:
        lines.append(f"Table = {_check_value('Table', i.table)}")
    for key, hooks in (("PreUp", i.pre_up), ("PostUp", i.post_up), ("PreDown", i.pre_down), ("PostDown", i.post_down)):
        lines += [f"{key} = {_check_value(key, h)}" for h in hooks]
    if i.save_config:
        lines.append("SaveConfig = true")
    lines += _extension_lines(i.extensions)
    for p in config.peers:
        lines += ["", "[Peer]"]
        if p.name is not None:
            lines.append(f"# Name = {_check_value('Name', p.name)}")
        lines.append(f"PublicKey = {encode_key(p.public_key)}")
        if p.preshared_key is not None:
            lines.append(f"PresharedKey = {encode_key(p.preshared_key)}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(a) for a in p.allowed_ips))
        if p.endpoint is not None:
            lines.append(f"Endpoint = {_check_value('Endpoint', _format_endpoint(*p.endpoint))}")
        if p.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive or 'off'}")
        lines += _extension_lines(p.extensions)
    return "\n".join(lines) + "\n"


def _extension_lines(extensions: dict[str, list[str]]) -> list[str]:
    return [f"{key} = {_check_value(key, v)}" for key, values in extensions.items() for v in values]


# --- name resolution (I/O: for the daemons, never the protocol core) -------------------


def resolve_endpoint(host: str, port: int, family_preference: int = socket.AF_UNSPEC) -> tuple:
    """Resolve an Endpoint to a socket address (2-tuple for IPv4, 4-tuple for IPv6).

    `family_preference` is socket.AF_INET, AF_INET6 or AF_UNSPEC: the first
    address of the preferred family is taken when there is one, otherwise the
    resolver's first answer. Raises EndpointResolutionError.
    """
    try:
        answers = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as e:
        raise EndpointResolutionError(f"cannot resolve {host!r}: {e}") from None
    usable = [a for a in answers if a[0] in (socket.AF_INET, socket.AF_INET6)]
    if not usable:
        raise EndpointResolutionError(f"{host!r} has no IPv4 or IPv6 address")
    for family, _type, _proto, _canon, sockaddr in usable:
        if family == family_preference:
            return sockaddr
    return usable[0][4]

