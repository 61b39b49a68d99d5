"""Server provisioning: `tunnel server init / add-client / remove-client / list / up`.

Files, all in one directory (default /etc/wireguard, beside wg-quick's):
    IFACE.conf            the server's wg-quick file (0600): its key, ListenPort,
                          Address (first host of each pool), one [Peer] per
                          client named by a `# Name = ...` comment. Nothing in it
                          is ours alone, so `wg-quick up IFACE` can run it too.
    IFACE.server.json     what only provisioning and the gateway need (0600):
                          endpoint clients dial, pools, DNS to hand out, site
                          subnets, NAT and client-to-client switches, keepalive.
    IFACE.clients/NAME.conf   each client's wg-quick file (0600; its private key).
    .IFACE.lock           flock()ed by every command that changes the files.

Rules kept here:
- nothing half-written: every file is replaced atomically (write_private_file);
  add-client writes the client file, then the server file, then tells the
  running daemon; if the daemon refuses, both files are put back as they were;
- the running daemon is changed through the control socket only (UAPI set),
  so other clients' sessions are untouched; a daemon that is not running
  simply reads the files when it starts;
- every mistake is a ProvisionError with a message for the user; key
  material never appears in one.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Iterator

from tunnel.config import (
    Config,
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    load_config,
    parse_config,
)
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key
from tunnel.secrets import read_private_file, write_private_file

DEFAULT_DIR = "/etc/wireguard"
DEFAULT_IFACE = "wg0"
DEFAULT_PORT = 51820
DEFAULT_POOL4 = "10.8.0.0/24"
DEFAULT_KEEPALIVE = 25

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_IFACE = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")


class ProvisionError(RuntimeError):
    """A provisioning step we refuse or could not do; str() is the message for the user."""


@dataclass
class Settings:
    """IFACE.server.json."""

    endpoint: str  # host clients dial, without port
    port: int = DEFAULT_PORT  # port clients dial (the listen port unless behind a port forward)
    pools: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    nat: bool = True
    client_to_client: bool = False
    keepalive: int = DEFAULT_KEEPALIVE
    full_tunnel: bool = True  # clients send everything (0.0.0.0/0, ::/0) unless --split

    def client_allowed_ips(self, split: bool | None = None) -> list[str]:
        split = (not self.full_tunnel) if split is None else split
        if split:
            return [str(ipaddress.ip_network(p)) for p in self.pools + self.sites]
        families = {ipaddress.ip_network(p).version for p in self.pools}
        return [n for v, n in ((4, "0.0.0.0/0"), (6, "::/0")) if v in families]


@dataclass
class Paths:
    directory: str
    ifname: str

    @property
    def conf(self) -> str:
        return os.path.join(self.directory, f"{self.ifname}.conf")

    @property
    def settings(self) -> str:
        return os.path.join(self.directory, f"{self.ifname}.server.json")

    @property
    def clients(self) -> str:
        return os.path.join(self.directory, f"{self.ifname}.clients")

    def client(self, name: str) -> str:
        return os.path.join(self.clients, f"{name}.conf")

    @property
    def lock(self) -> str:
        return os.path.join(self.directory, f".{self.ifname}.lock")


@dataclass
class ClientInfo:
    name: str
    public_key: str
    addresses: list[str]
    endpoint: str | None = None
    latest_handshake: int = 0  # UNIX seconds, 0: never
    rx_bytes: int = 0
    tx_bytes: int = 0
    online: bool = False  # the running daemon knows this peer


# --- helpers ------------------------------------------------------------------------


def paths(directory: str | None, ifname: str | None) -> Paths:
    ifname = ifname or DEFAULT_IFACE
    if not _IFACE.fullmatch(ifname):
        raise ProvisionError(f"{ifname!r} is not an interface name (1-15 of a-z A-Z 0-9 _ = + . -)")
    return Paths(directory or DEFAULT_DIR, ifname)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ProvisionError(
            f"client name {name!r}: use 1-32 of letters, digits, '_', '.', '-', starting with a letter or digit")
    return name


@contextlib.contextmanager
def _locked(p: Paths) -> Iterator[None]:
    try:
        fd = os.open(p.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise ProvisionError(f"{p.directory} does not exist: run `tunnel server init` first") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(p: Paths) -> tuple[Config, Settings]:
    if not os.path.exists(p.conf) or not os.path.exists(p.settings):
        raise ProvisionError(f"no server {p.ifname} in {p.directory}: run `tunnel server init` first")
    try:
        config = load_config(p.conf)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    try:
        data = json.loads(read_private_file(p.settings))
        settings = Settings(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ProvisionError(f"{p.settings}: cannot use it: {exc}") from None
    return config, settings


def _random_ula() -> str:
    """A /64 in a random RFC 4193 prefix (fd00::/8 plus 40 random bits)."""
    global_id = int.from_bytes(os.urandom(5), "big")
    return str(ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64)))


def _split_endpoint(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, None
    if not host or any(c.isspace() or c in "#/[]" for c in host):
        raise ProvisionError(f"endpoint {text!r}: expected HOST, HOST:PORT or [IPv6]:PORT")
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ProvisionError(f"endpoint {text!r}: the port must be from 1 to 65535")
    return host, int(port) if port is not None else None


def _network(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as exc:
        raise ProvisionError(f"{what} {text!r}: {exc}") from None


# --- init ---------------------------------------------------------------------------


def init_server(directory: str | None, ifname: str | None, endpoint: str, *, port: int = DEFAULT_PORT,
                pools: list[str] | None = None, dns: list[str] = (), sites: list[str] = (),
                nat: bool = True, client_to_client: bool = False, full_tunnel: bool = True,
                keepalive: int = DEFAULT_KEEPALIVE, metrics: str | None = None, force: bool = False) -> Paths:
    """Create the server's key, config and settings. Refuses to overwrite unless FORCE."""
    p = paths(directory, ifname)
    if not 0 < port < 65536:
        raise ProvisionError("the listen port must be from 1 to 65535")
    host, dial_port = _split_endpoint(endpoint)
    pools = [_network(x, "pool") for x in (pools or [DEFAULT_POOL4, _random_ula()])]
    if len({ipaddress.ip_network(x).version for x in pools}) != len(pools):
        raise ProvisionError("give at most one IPv4 and one IPv6 pool")
    for x in pools:
        net = ipaddress.ip_network(x)
        if net.num_addresses < 4:
            raise ProvisionError(f"pool {x} is too small for a server and a client")
    sites = [_network(x, "site subnet") for x in sites]
    dns_list = []
    for d in dns:
        try:
            dns_list.append(str(ipaddress.ip_address(d.strip())))
        except ValueError:
            raise ProvisionError(f"DNS {d!r} is not an IP address") from None
    if not 0 <= keepalive <= 65535:
        raise ProvisionError("keepalive must be from 0 to 65535 seconds")
    if metrics:
        from server.metrics import MetricsError, parse_address

        try:
            parse_address(metrics)
        except MetricsError as exc:
            raise ProvisionError(str(exc)) from None
    if not force and (os.path.exists(p.conf) or os.path.exists(p.settings)):
        raise ProvisionError(f"{p.conf} already exists (use --force to replace it and forget its clients)")
    os.makedirs(p.directory, mode=0o700, exist_ok=True)
    with _locked(p):
        addresses = [ipaddress.ip_interface(f"{next(ipaddress.ip_network(x).hosts())}/{ipaddress.ip_network(x).prefixlen}")
                     for x in pools]
        iface = InterfaceConfig(private_key=DH_GENERATE(os.urandom(32)), listen_port=port, addresses=addresses)
        if metrics:
            iface.extensions["MetricsAddress"] = [metrics]
        config = Config(interface=iface, name=p.ifname)
        settings = Settings(endpoint=host, port=dial_port or port, pools=pools, dns=dns_list, sites=sites,
                            nat=nat, client_to_client=client_to_client, keepalive=keepalive,
                            full_tunnel=full_tunnel)
        os.makedirs(p.clients, mode=0o700, exist_ok=True)
        write_private_file(p.settings, json.dumps(asdict(settings), indent=2) + "\n")
        write_private_file(p.conf, config.to_text())
    return p


# --- clients ------------------------------------------------------------------------


def _used_addresses(config: Config) -> set:
    used = {a.ip for a in config.interface.addresses}
    for peer in config.peers:
        used |= {a.ip for a in peer.allowed_ips}
    return used


def _next_free(pool: str, used: set):
    net = ipaddress.ip_network(pool)
    for host in net.hosts():
        if host not in used:
            return host
    raise ProvisionError(f"pool {pool} is full")


def _client_text(config: Config, settings: Settings, private_key: bytes, psk: bytes,
                 addresses: list, split: bool | None) -> str:
    iface = InterfaceConfig(private_key=private_key, addresses=addresses,
                            dns=[ipaddress.ip_address(d) for d in settings.dns])
    server = PeerConfig(
        public_key=config.interface.public_key,
        preshared_key=psk,
        allowed_ips=[ipaddress.ip_interface(n) for n in settings.client_allowed_ips(split)],
        endpoint=(settings.endpoint, settings.port),
        persistent_keepalive=settings.keepalive or None,
    )
    return Config(interface=iface, peers=[server]).to_text()


def _peer_request(peer: PeerConfig) -> str:
    lines = ["set=1", f"public_key={peer.public_key.hex()}"]
    if peer.name:
        lines.append(f"name={peer.name}")
    if peer.preshared_key:
        lines.append(f"preshared_key={peer.preshared_key.hex()}")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={n}" for n in peer.allowed_networks()]
    return "\n".join(lines)


def _tell_daemon(p: Paths, text: str, socket_dir: str | None) -> str | None:
    """Send a set request; None if applied, 'not running' if no daemon, raise if refused."""
    from server import control

    try:
        answer = control.request(p.ifname, text, socket_dir or control.SOCKET_DIR)
    except control.ControlError:
        return "not running"
    code = control.answer_errno(answer)
    if code:
        raise ProvisionError(f"the running {p.ifname} refused the change: {os.strerror(code)}")
    return None


@dataclass
class AddedClient:
    name: str
    path: str
    config_text: str
    addresses: list[str]
    live: bool  # the running daemon has the peer now


def add_client(directory: str | None, ifname: str | None, name: str, *, split: bool | None = None,
               socket_dir: str | None = None) -> AddedClient:
    p = paths(directory, ifname)
    check_name(name)
    with _locked(p):
        config, settings = _load(p)
        if any(peer.name == name for peer in config.peers) or os.path.exists(p.client(name)):
            raise ProvisionError(f"a client named {name!r} already exists")
        used = _used_addresses(config)
        addresses = []
        for pool in settings.pools:
            host = _next_free(pool, used)
            addresses.append(ipaddress.ip_interface(f"{host}/{host.max_prefixlen}"))
        private_key = DH_GENERATE(os.urandom(32))
        psk = os.urandom(32)
        text = _client_text(config, settings, private_key, psk, addresses, split)
        parse_config(text, filename=f"{name}.conf")  # what we hand out must read back
        peer = PeerConfig(public_key=DH_PUBKEY(private_key), preshared_key=psk,
                          allowed_ips=list(addresses), name=name)
        old_server_text = config.to_text()
        config.peers.append(peer)
        os.makedirs(p.clients, mode=0o700, exist_ok=True)
        write_private_file(p.client(name), text)
        try:
            write_private_file(p.conf, config.to_text())
            status = _tell_daemon(p, _peer_request(peer), socket_dir)
        except BaseException:
            write_private_file(p.conf, old_server_text)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.client(name))
            raise
    return AddedClient(name, p.client(name), text, [str(a) for a in addresses], live=status is None)


def remove_client(directory: str | None, ifname: str | None, name: str,
                  socket_dir: str | None = None) -> bool:
    """Remove NAME from the files and the running daemon; True if a running daemon dropped it."""
    p = paths(directory, ifname)
    check_name(name)
    with _locked(p):
        config, _ = _load(p)
        peer = next((x for x in config.peers if x.name == name), None)
        if peer is None:
            raise ProvisionError(f"no client named {name!r}")
        old_server_text = config.to_text()
        config.peers.remove(peer)
        write_private_file(p.conf, config.to_text())
        try:
            status = _tell_daemon(p, f"set=1\npublic_key={peer.public_key.hex()}\nremove=true", socket_dir)
        except BaseException:
            write_private_file(p.conf, old_server_text)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p.client(name))
    return status is None


def client_config(directory: str | None, ifname: str | None, name: str) -> str:
    p = paths(directory, ifname)
    check_name(name)
    try:
        return read_private_file(p.client(name)).decode("utf-8")
    except FileNotFoundError:
        raise ProvisionError(f"no client named {name!r} in {p.clients}") from None


def list_clients(directory: str | None, ifname: str | None, socket_dir: str | None = None) -> list[ClientInfo]:
    from server import control

    p = paths(directory, ifname)
    config, _ = _load(p)
    live: dict[str, dict] = {}
    try:
        _, peers = control.parse_get(control.request(p.ifname, "get=1", socket_dir or control.SOCKET_DIR))
        live = {str(x["public_key"]): x for x in peers}
    except control.ControlError:
        pass
    out = []
    for peer in config.peers:
        info = ClientInfo(name=peer.name or encode_key(peer.public_key)[:8], public_key=encode_key(peer.public_key),
                          addresses=[str(a) for a in peer.allowed_ips])
        state = live.get(peer.public_key.hex())
        if state is not None:
            info.online = True
            info.endpoint = state.get("endpoint")  # type: ignore[assignment]
            info.latest_handshake = int(state.get("last_handshake_time_sec", 0))  # type: ignore[arg-type]
            info.rx_bytes = int(state.get("rx_bytes", 0))  # type: ignore[arg-type]
            info.tx_bytes = int(state.get("tx_bytes", 0))  # type: ignore[arg-type]
        out.append(info)
    return out


# --- running the server -------------------------------------------------------------


def run_server(directory: str | None, ifname: str | None, **up_options) -> str | None:
    """`tunnel up IFACE.conf` plus the NAT gateway from the settings; None or the failure message."""
    from server.gateway import apply_gateway
    from tunnel.runner import run_up

    try:
        p = paths(directory, ifname)
        _, settings = _load(p)
    except ProvisionError as exc:
        return str(exc)

    def gateway(interface) -> None:
        apply_gateway(interface.journal, interface.name, settings.pools, masquerade=settings.nat,
                      allow_client_to_client=settings.client_to_client)

    return run_up(p.conf, extra_setup=[gateway], **up_options)
