"""Server provisioning on the registry: init, join, add-client, set-groups, set-expiry, remove-client,
list, show-client. The CLI (server/cli_server.py) calls these; each returns values or raises
ProvisionError with one line for the user.

Rules kept here:
- the registry is the truth and every command is one registry transaction
  (address allocation included); IFACE.conf is regenerated from it
  afterwards (render.py, atomically, never older than the file it replaces);
- the running daemon learns of a change from the registry itself (its
  reconciler, server/reconcile.py), on this gateway and every other; the
  control socket is only read, to tell the user when this machine's daemon
  has applied the change;
- a server of the old file layout is migrated on first use (filemigration.py);
- key material never appears in a message.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Iterator

from server import render, statecache
from server.expiry import ExpiryError, describe_expiry, parse_expiry  # noqa: F401 - describe_expiry re-exported
from server.filemigration import Migration, MigrationError, migrate, needed
from server.layout import (
    DEFAULT_DIR,  # noqa: F401 - re-exported for callers
    DEFAULT_IFACE,  # noqa: F401
    LayoutError,
    Local,
    Paths,
    default_gateway_name,
    locked,
    paths as _paths,
    read_local,
)
from server.registry import (
    Client,
    Registry,
    RegistryError,
    ServerSettings,
    Snapshot,
    check_name,
    is_postgres,
    open_registry,
    split_endpoint,
)
from tunnel import control
from tunnel.config import ConfigError, parse_config
from tunnel.protocol.crypto import DH_GENERATE, DH_PUBKEY, encode_key
from tunnel.secrets import write_private_file

DEFAULT_PORT = 51820
DEFAULT_POOL4 = "10.8.0.0/24"
DEFAULT_KEEPALIVE = 25
CONFIRM_TIMEOUT = 5.0  # seconds add/remove-client waits to see this machine's daemon apply the change


class ProvisionError(RuntimeError):
    """A provisioning step we refuse or could not do; str() is the message for the user."""


def paths(directory: str | None, ifname: str | None) -> Paths:
    try:
        return _paths(directory, ifname)
    except LayoutError as exc:
        raise ProvisionError(str(exc)) from None


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (RegistryError, LayoutError, MigrationError, ExpiryError, render.RenderError) as exc:
        raise ProvisionError(str(exc)) from None


# --- opening a server ----------------------------------------------------------------


@dataclass
class Server:
    paths: Paths
    local: Local
    registry: Registry
    migration: Migration | None = None  # set when this open migrated the old files

    def close(self) -> None:
        self.registry.close()


def locate(p: Paths) -> tuple[Local, Migration | None]:
    """Where this server's registry is; migrates the old file layout first if that is what is there."""
    local = read_local(p)
    if local is not None:
        return local, None
    if not os.path.isdir(p.directory):
        raise ProvisionError(f"no server {p.ifname} in {p.directory}: run `tunnel server init` first")
    with _errors(), locked(p):
        local = read_local(p)  # another command may have migrated meanwhile
        if local is not None:
            return local, None
        if needed(p):
            gateway = default_gateway_name()
            result = migrate(p, gateway)
            local = Local(registry=p.db, gateway=gateway)
            with open_registry(p.db, create=False) as reg:
                _publish_locked(p, reg.snapshot(), local, time.time())
            return local, result
        if os.path.exists(p.db):  # IFACE.conf lost: the registry beside it is the truth
            return Local(registry=p.db, gateway=default_gateway_name()), None
    raise ProvisionError(f"no server {p.ifname} in {p.directory}: run `tunnel server init` first")


@contextlib.contextmanager
def open_server(directory: str | None, ifname: str | None) -> Iterator[Server]:
    p = paths(directory, ifname)
    local, migration = locate(p)
    with _errors():
        reg = open_registry(local.registry, create=False)
    try:
        yield Server(p, local, reg, migration)
    finally:
        reg.close()


def publish(p: Paths, snap: Snapshot, local: Local, now: float | None = None) -> bool:
    """Regenerate IFACE.conf (and the daemon's cache) from SNAP; False if the file was newer or the same."""
    with _errors(), locked(p):
        return _publish_locked(p, snap, local, time.time() if now is None else now)


def _publish_locked(p: Paths, snap: Snapshot, local: Local, now: float) -> bool:
    current = read_local(p)
    if current is not None and current.revision is not None and current.revision > snap.revision:
        return False  # a later change already wrote a newer file
    text = render.server_config(snap, local, now)
    try:
        with open(p.conf, encoding="utf-8") as f:
            same = f.read() == text
    except FileNotFoundError:
        same = False
    if not same:
        write_private_file(p.conf, text)
    statecache.save(p, snap)
    return not same


# --- init and join -------------------------------------------------------------------


def _random_ula() -> str:
    """A /64 in a random RFC 4193 prefix (fd00::/8 plus 40 random bits)."""
    global_id = int.from_bytes(os.urandom(5), "big")
    return str(ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64)))


def _split_endpoint(text: str) -> tuple[str, int | None]:
    try:
        return split_endpoint(text)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None


def _network(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as exc:
        raise ProvisionError(f"{what} {text!r}: {exc}") from None


def _check_metrics(metrics: str | None) -> None:
    if metrics:
        from tunnel.metrics import MetricsError, parse_address

        try:
            parse_address(metrics)
        except MetricsError as exc:
            raise ProvisionError(str(exc)) from None


def _gateway_name(name: str | None) -> str:
    with _errors():
        return check_name("gateway", name or default_gateway_name())


def _registry_location(p: Paths, registry: str | None) -> str:
    if not registry:
        return p.db
    if is_postgres(registry):
        return registry
    if "://" in registry:
        raise ProvisionError(f"registry {registry.split('://')[0]}://...: give a file path or a postgresql:// URL")
    return os.path.abspath(registry)


def init_server(directory: str | None, ifname: str | None, endpoint: str, *, port: int = DEFAULT_PORT,
                pools: list[str] | None = None, dns: list[str] = (), sites: list[str] = (),
                nat: bool = True, client_to_client: bool = False, full_tunnel: bool = True,
                keepalive: int = DEFAULT_KEEPALIVE, metrics: str | None = None, force: bool = False,
                registry: str | None = None, gateway: str | None = None) -> Local:
    """Create the server's key and settings in a new registry (SQLite beside the config unless REGISTRY)."""
    p = paths(directory, ifname)
    if not 0 < port < 65536:
        raise ProvisionError("the listen port must be from 1 to 65535")
    host, dial_port = _split_endpoint(endpoint)
    pools = [_network(x, "pool") for x in (pools or [DEFAULT_POOL4, _random_ula()])]
    if len({ipaddress.ip_network(x).version for x in pools}) != len(pools):
        raise ProvisionError("give at most one IPv4 and one IPv6 pool")
    for x in pools:
        if ipaddress.ip_network(x).num_addresses < 4:
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
    _check_metrics(metrics)
    name = _gateway_name(gateway)
    location = _registry_location(p, registry)
    existing = [f for f in (p.conf, p.legacy_settings) if os.path.exists(f)]
    if os.path.exists(p.db) and location == p.db:
        existing.append(p.db)
    if existing and not force:
        raise ProvisionError(f"{existing[0]} already exists (use --force to replace it and forget its clients)")
    os.makedirs(p.directory, mode=0o700, exist_ok=True)
    settings = ServerSettings(private_key=encode_key(DH_GENERATE(os.urandom(32))), endpoint=host,
                              port=dial_port or port, listen_port=port, pools=tuple(pools), dns=tuple(dns_list),
                              sites=tuple(sites), nat=nat, client_to_client=client_to_client, keepalive=keepalive,
                              full_tunnel=full_tunnel)
    with _errors(), locked(p):
        if force:
            _forget_old_layout(p)
        reg = open_registry(location)
        try:
            reg.initialize(settings, force=force)
            reg.register_gateway(name, endpoint=endpoint, options={"metrics": metrics} if metrics else {})
            local = Local(registry=location, gateway=name)
            _publish_locked(p, reg.snapshot(), local, time.time())
        finally:
            reg.close()
    return local


def _forget_old_layout(p: Paths) -> None:
    for f in (p.legacy_settings, p.cache):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    shutil.rmtree(p.legacy_clients, ignore_errors=True)


def join_server(directory: str | None, ifname: str | None, registry: str, *, gateway: str | None = None,
                endpoint: str | None = None, metrics: str | None = None, force: bool = False) -> Local:
    """Make this machine another gateway of the server whose registry is REGISTRY."""
    p = paths(directory, ifname)
    if endpoint:
        _split_endpoint(endpoint)
    _check_metrics(metrics)
    name = _gateway_name(gateway)
    location = _registry_location(p, registry)
    if os.path.exists(p.conf) and not force:
        raise ProvisionError(f"{p.conf} already exists (use --force to replace it with this registry's)")
    os.makedirs(p.directory, mode=0o700, exist_ok=True)
    with _errors(), locked(p):
        reg = open_registry(location, create=False)
        try:
            if not reg.initialized():
                raise ProvisionError(f"registry {reg.location} holds no server yet: run `tunnel server init "
                                     "--registry ...` on the first gateway")
            reg.register_gateway(name, endpoint=endpoint, options={"metrics": metrics} if metrics else {})
            local = Local(registry=location, gateway=name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.conf)  # --force: the new registry's file replaces it whatever its revision
            _publish_locked(p, reg.snapshot(), local, time.time())
        finally:
            reg.close()
    return local


# --- clients -------------------------------------------------------------------------


@dataclass
class AddedClient:
    name: str
    config_text: str = field(repr=False)  # holds the client's private key
    addresses: list[str]
    groups: tuple[str, ...]
    expires_at: float | None
    daemon: str  # "applied", "not running" or "pending" (this machine's daemon)
    migration: Migration | None = None


def _groups(groups) -> list[str]:
    out: list[str] = []
    for item in groups or ():
        out += [g.strip() for g in item.split(",") if g.strip()]
    return out


def _await_daemon(p: Paths, public_key: str, present: bool, socket_dir: str | None) -> str:
    """Watch this machine's daemon (control socket, read only) until it has applied the change."""
    hex_key = base64.b64decode(public_key).hex()
    deadline = time.monotonic() + CONFIRM_TIMEOUT
    while True:
        try:
            found = _daemon_has(p.ifname, hex_key, socket_dir or control.SOCKET_DIR)
        except control.ControlError:
            return "not running"
        if found == present:
            return "applied"
        if time.monotonic() > deadline:
            return "pending"
        time.sleep(0.05)


def _daemon_has(ifname: str, hex_key: str, socket_dir: str) -> bool:
    """Whether the daemon has this peer: asked about it alone (get=tunnel with its key), not all 10,000."""
    answer = control.request(ifname, f"get=tunnel\npublic_key={hex_key}", socket_dir)
    for line in answer.split("\n"):
        if line.startswith("json="):
            wanted = base64.b64encode(bytes.fromhex(hex_key)).decode()
            return any(x["public_key"] == wanted for x in json.loads(line[5:])["peers"])
    _, peers = control.parse_get(control.request(ifname, "get=1", socket_dir))  # not ours: wg's own question
    return any(x["public_key"] == hex_key for x in peers)


def add_client(directory: str | None, ifname: str | None, name: str, *, groups=(), expires: str | None = None,
               split: bool | None = None, socket_dir: str | None = None, now: float | None = None) -> AddedClient:
    now = time.time() if now is None else now
    with _errors():
        check_name("client", name)
        group_list = _groups(groups)
        for g in group_list:
            check_name("group", g)
        expires_at = parse_expiry(expires, now) if expires else None
    with open_server(directory, ifname) as srv, _errors():
        private_key = DH_GENERATE(os.urandom(32))
        options = {} if split is None else {"split": split}
        client = srv.registry.add_client(name, encode_key(DH_PUBKEY(private_key)),
                                         preshared_key=encode_key(os.urandom(32)),
                                         private_key=encode_key(private_key), groups=group_list,
                                         expires_at=expires_at, options=options, now=now)
        snap = srv.registry.snapshot()
        text = render.client_config(snap.settings, client, snap.policy.text if snap.policy else None,
                                    snap.gateways)
        try:
            parse_config(text, filename=f"{name}.conf")  # what we hand out must read back
        except ConfigError as exc:
            srv.registry.remove_client(name)
            raise ProvisionError(f"internal error, client {name} not added: {exc}") from None
        publish(srv.paths, snap, srv.local)
        state = _await_daemon(srv.paths, client.public_key, True, socket_dir)
        return AddedClient(name, text, client.addresses, client.groups, client.expires_at, state, srv.migration)


def remove_client(directory: str | None, ifname: str | None, name: str, socket_dir: str | None = None) -> str:
    """Remove NAME; this machine's daemon state afterwards ("applied": its session ended)."""
    with _errors():
        check_name("client", name)
    with open_server(directory, ifname) as srv, _errors():
        client = srv.registry.remove_client(name)
        publish(srv.paths, srv.registry.snapshot(), srv.local)
        return _await_daemon(srv.paths, client.public_key, False, socket_dir)


def set_groups(directory: str | None, ifname: str | None, name: str, groups) -> Client:
    with _errors():
        group_list = _groups([groups] if isinstance(groups, str) else groups)
        for g in group_list:
            check_name("group", g)
    with open_server(directory, ifname) as srv, _errors():
        client = srv.registry.set_groups(name, group_list)
        publish(srv.paths, srv.registry.snapshot(), srv.local)
        return client


def set_expiry(directory: str | None, ifname: str | None, name: str, expires: str,
               now: float | None = None) -> Client:
    now = time.time() if now is None else now
    with _errors():
        expires_at = parse_expiry(expires, now)
    with open_server(directory, ifname) as srv, _errors():
        client = srv.registry.set_expiry(name, expires_at)
        publish(srv.paths, srv.registry.snapshot(), srv.local)
        return client


def client_config(directory: str | None, ifname: str | None, name: str) -> str:
    with _errors():
        check_name("client", name)
    with open_server(directory, ifname) as srv, _errors():
        snap = srv.registry.snapshot()
        client = snap.client(name)
        if client is None:
            raise ProvisionError(f"no client named {name!r}")
        return render.client_config(snap.settings, client, snap.policy.text if snap.policy else None,
                                    snap.gateways)


@dataclass
class ClientInfo:
    name: str
    public_key: str
    addresses: list[str]
    groups: list[str] = field(default_factory=list)
    expires_at: float | None = None
    expired: bool = False
    disabled: bool = False
    endpoint: str | None = None
    latest_handshake: int = 0  # UNIX seconds, 0: never
    rx_bytes: int = 0
    tx_bytes: int = 0
    online: bool = False  # this machine's running daemon holds this peer


def list_clients(directory: str | None, ifname: str | None, socket_dir: str | None = None,
                 now: float | None = None) -> list[ClientInfo]:
    now = time.time() if now is None else now
    with open_server(directory, ifname) as srv, _errors():
        clients = srv.registry.clients()
        live: dict[str, dict] = {}
        try:
            _, peers = control.parse_get(control.request(srv.paths.ifname, "get=1",
                                                         socket_dir or control.SOCKET_DIR))
            live = {str(x["public_key"]): x for x in peers}
        except control.ControlError:
            pass
    out = []
    for c in clients:
        info = ClientInfo(name=c.name, public_key=c.public_key, addresses=c.addresses, groups=list(c.groups),
                          expires_at=c.expires_at, expired=c.expired(now), disabled=c.disabled)
        state = live.get(base64.b64decode(c.public_key).hex())
        if state is not None:
            info.online = True
            info.endpoint = state.get("endpoint")  # type: ignore[assignment]
            info.latest_handshake = int(state.get("last_handshake_time_sec", 0))  # type: ignore[arg-type]
            info.rx_bytes = int(state.get("rx_bytes", 0))  # type: ignore[arg-type]
            info.tx_bytes = int(state.get("tx_bytes", 0))  # type: ignore[arg-type]
        out.append(info)
    return out
