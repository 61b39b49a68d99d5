"""The configuration as data: what parse.py builds and write.py writes.

Rules kept here: None means "not given" (wg-quick's default applies); the
private and preshared keys are raw bytes that no repr shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import ClassVar

from ..protocol.crypto import DH_PUBKEY
from .write import write_config

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

MTU_MIN_IPV4 = 576  # RFC 791: every IPv4 host must accept this
MTU_MIN_IPV6 = 1280  # RFC 8200: Linux disables IPv6 on a link below this
MTU_MAX = 65535


class ConfigError(ValueError):
    """A configuration file we refuse; str() is `file:line: what is wrong`."""

    def __init__(self, filename: str, line: int | None, message: str, text: str | None = None):
        self.filename = filename
        self.line = line
        self.message = message
        where = f"{filename}:{line}" if line is not None else filename
        # `text` replaces the usual form when the message already names the file.
        super().__init__(text or f"{where}: {message}")


@dataclass
class InterfaceConfig:
    """The [Interface] section. None means "not given" (wg-quick's default applies)."""

    # Our own keys, lower case -> spelling used when writing. Later features add
    # theirs here (e.g. "killswitch": "KillSwitch"); wg-quick never sees them.
    EXTENSION_KEYS: ClassVar[dict[str, str]] = {
        "killswitch": "KillSwitch",  # on/off; default on for full-tunnel configs
        "metricsaddress": "MetricsAddress",  # host:port of the Prometheus endpoint
        # The UDP port binds to these addresses (one per family) instead of all of them; they
        # need not be on an interface yet (a virtual IP that moves between gateways).
        "listenaddress": "ListenAddress",
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
    # From `# FailoverEndpoints = HOST:PORT, ...` comments: where else this peer
    # answers (other gateways with its key), tried in order after `endpoint`.
    failover_endpoints: list[tuple[str, int]] = field(default_factory=list)

    def endpoints(self) -> list[tuple[str, int]]:
        """Endpoint first, then the fail-over ones, without repeats."""
        out = [self.endpoint] if self.endpoint is not None else []
        return out + [e for i, e in enumerate(self.failover_endpoints)
                      if e not in out and e not in self.failover_endpoints[:i]]

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
        return write_config(self)

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
