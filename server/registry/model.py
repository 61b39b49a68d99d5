"""What the registry holds, as plain values, and the errors it raises.

Rules kept here:
- values only: no I/O, no clock; every time is UNIX seconds (float) given
  by the caller or stamped by the backend;
- keys are base64 text (as `wg` prints them) so a row reads the same in
  `sqlite3` or `psql` as in a config file; private keys never appear in a
  repr (field(repr=False)) nor in an error message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any


class RegistryError(RuntimeError):
    """A change we refuse or a registry we cannot use; str() is one line for the user."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached now (server down, file locked too long): retry later."""


class NotFound(RegistryError):
    pass


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
NAME_RULE = "1-32 of letters, digits, '_', '.', '-', starting with a letter or digit"


def check_name(kind: str, name: str) -> str:
    """Client, user, group and gateway names: safe in file names, nft comments and policy files."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"{kind} name {name!r}: use {NAME_RULE}")
    return name


class Conflict(RegistryError):
    """A unique name, key or address is taken, or a pool is full."""


@dataclass(frozen=True)
class ServerSettings:
    """What every gateway of one server shares."""

    private_key: str = field(repr=False)  # base64: the registry is the secret store
    endpoint: str = ""  # host clients dial, without port
    port: int = 51820  # port clients dial (the listen port unless behind a port forward)
    listen_port: int = 51820
    pools: tuple[str, ...] = ()  # at most one IPv4 and one IPv6 network
    dns: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    nat: bool = True
    client_to_client: bool = False
    keepalive: int = 25
    full_tunnel: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # later features' settings (HA, auth, ...)

    FIELDS = ("private_key", "endpoint", "port", "listen_port", "pools", "dns", "sites", "nat",
              "client_to_client", "keepalive", "full_tunnel")

    def pool(self, version: int) -> str | None:
        for p in self.pools:
            if ipaddress.ip_network(p).version == version:
                return p
        return None

    def server_addresses(self) -> list[str]:
        """The server's own tunnel address in each pool: its first host, with the pool's prefix."""
        out = []
        for p in self.pools:
            net = ipaddress.ip_network(p)
            out.append(f"{next(net.hosts())}/{net.prefixlen}")
        return out

    def client_allowed_ips(self, split: bool | None = None) -> list[str]:
        """What a client routes into the tunnel: everything, or only the pools and sites (split)."""
        split = (not self.full_tunnel) if split is None else split
        if split:
            return [str(ipaddress.ip_network(p)) for p in (*self.pools, *self.sites)]
        families = {ipaddress.ip_network(p).version for p in self.pools}
        return [n for v, n in ((4, "0.0.0.0/0"), (6, "::/0")) if v in families]


@dataclass(frozen=True)
class Client:
    name: str
    public_key: str
    preshared_key: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # only if we generated it
    ipv4: str | None = None  # host address, no prefix
    ipv6: str | None = None
    groups: tuple[str, ...] = ()
    created: float = 0.0
    expires_at: float | None = None
    disabled: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # per-client choices, e.g. {"split": True}

    @property
    def addresses(self) -> list[str]:
        """The client's tunnel addresses as host prefixes: its AllowedIPs on the server."""
        return [f"{a}/{32 if v == 4 else 128}" for v, a in ((4, self.ipv4), (6, self.ipv6)) if a]

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def active(self, now: float) -> bool:
        """Whether the server should hold this client's peer at `now`."""
        return not self.disabled and not self.expired(now)


@dataclass(frozen=True)
class Policy:
    text: str
    sha256: str
    version: int  # 1, 2, ... one more for every policy set
    applied_at: float


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str = field(repr=False)  # opaque to the registry
    totp_secret: str | None = field(default=None, repr=False)
    groups: tuple[str, ...] = ()
    disabled: bool = False
    created: float = 0.0
    totp_last_step: int | None = None  # the step of the last one-time code accepted


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    client: str  # client name
    gateway: str | None
    started: float
    expires_at: float | None
    idle_timeout: float | None  # seconds
    last_activity: float
    rx_bytes: int = 0
    tx_bytes: int = 0
    ended_at: float | None = None
    end_reason: str | None = None
    groups: tuple[str, ...] = ()  # what the login granted (from the registry's user or from RADIUS)

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def live(self, now: float) -> bool:
        """Active and within its lifetime (idle time is judged by the gateway that sees its traffic)."""
        return self.ended_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class PeerEndpoint:
    public_key: str
    endpoint: str  # "IP:port" or "[IPv6]:port"
    last_seen: float
    gateway: str | None = None


def split_endpoint(text: str) -> tuple[str, int | None]:
    """HOST, HOST:PORT or [IPv6]:PORT (as init/join --endpoint take it): (host, port or None); ValueError."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, None
    if not host or any(c.isspace() or c in "#/[]," for c in host):
        raise ValueError(f"endpoint {text!r}: expected HOST, HOST:PORT or [IPv6]:PORT")
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"endpoint {text!r}: the port must be from 1 to 65535")
    return host, int(port) if port is not None else None


@dataclass(frozen=True)
class Gateway:
    name: str
    endpoint: str | None = None  # HOST[:PORT] clients may dial for this gateway
    last_heartbeat: float | None = None
    ha_role: str | None = None  # configured: e.g. "vrrp"
    ha_state: str | None = None  # observed: master / backup / fault
    options: dict[str, Any] = field(default_factory=dict)  # this gateway's own settings (metrics address, HA)


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of everything reconcilers act on."""

    revision: int
    settings: ServerSettings
    clients: tuple[Client, ...]
    policy: Policy | None
    sessions: tuple[Session, ...]  # active ones only
    gateways: tuple[Gateway, ...]

    def client(self, name: str) -> Client | None:
        return next((c for c in self.clients if c.name == name), None)

    def active_clients(self, now: float) -> list[Client]:
        return [c for c in self.clients if c.active(now)]

    def next_expiry(self, now: float) -> float | None:
        """The earliest expires_at still ahead of `now` among clients not disabled."""
        ahead = [c.expires_at for c in self.clients
                 if c.expires_at is not None and not c.disabled and c.expires_at > now]
        return min(ahead) if ahead else None
