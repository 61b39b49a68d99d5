"""Move a server of the file layout (IFACE.conf + IFACE.server.json + IFACE.clients/) into a registry, once.

What is carried over: the server's key, listen port and MetricsAddress (from
IFACE.conf), endpoint, dial port, pools, DNS, sites, NAT, client-to-client,
keepalive and full/split default (IFACE.server.json), and every [Peer] of
IFACE.conf as a client: its `# Name`, public key, PSK, addresses, and the
private key from IFACE.clients/NAME.conf when that file is there (so
show-client can print it again); created = that file's time.

Rules kept here:
- once: the old files are moved into IFACE.pre-registry-TIMESTAMP/ (0700)
  after the registry is complete, and a layout without IFACE.server.json is
  never migrated again;
- all or nothing: the registry is built in IFACE.db.migrating and renamed
  to IFACE.db only when complete; a run interrupted after the rename
  finds IFACE.db and only finishes the backup;
- the caller holds the server directory's lock (layout.locked).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass, field

from server.layout import Paths
from server.registry import RegistryError, ServerSettings, open_registry
from tunnel.config import ConfigError, load_config
from tunnel.protocol.crypto import DH_PUBKEY, encode_key
from tunnel.secrets import read_private_file


class MigrationError(RuntimeError):
    pass


@dataclass
class Migration:
    clients: int = 0
    backup: str = ""
    notes: list[str] = field(default_factory=list)


def needed(p: Paths) -> bool:
    return os.path.exists(p.legacy_settings)


def migrate(p: Paths, gateway: str) -> Migration:
    """Build p.db from the old files and move them into a backup folder."""
    result = Migration()
    if not os.path.exists(p.db):
        _build(p, gateway, result)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = os.path.join(p.directory, f"{p.ifname}.pre-registry-{stamp}")
    os.makedirs(backup, mode=0o700)
    for old in (p.conf, p.legacy_settings, p.legacy_clients):
        if os.path.lexists(old):
            os.replace(old, os.path.join(backup, os.path.basename(old)))
    result.backup = backup
    return result


def _build(p: Paths, gateway: str, result: Migration) -> None:
    try:
        config = load_config(p.conf)
        old = json.loads(read_private_file(p.legacy_settings))
    except (ConfigError, OSError, ValueError) as exc:
        raise MigrationError(f"cannot migrate the files of {p.ifname} to a registry: {exc}") from None
    iface = config.interface
    settings = ServerSettings(
        private_key=encode_key(iface.private_key),
        endpoint=old.get("endpoint", ""),
        port=int(old.get("port") or iface.listen_port or 51820),
        listen_port=int(iface.listen_port or 51820),
        pools=tuple(old.get("pools", ())),
        dns=tuple(old.get("dns", ())),
        sites=tuple(old.get("sites", ())),
        nat=bool(old.get("nat", True)),
        client_to_client=bool(old.get("client_to_client", False)),
        keepalive=int(old.get("keepalive", 25)),
        full_tunnel=bool(old.get("full_tunnel", True)),
    )
    building = p.db + ".migrating"
    for leftover in (building, building + "-wal", building + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    try:
        with open_registry(building) as reg:
            reg.initialize(settings)
            metrics = iface.extension("MetricsAddress")
            reg.register_gateway(gateway, endpoint=None, options={"metrics": metrics} if metrics else {})
            for n, peer in enumerate(config.peers, 1):
                _client(p, reg, peer, n, settings, result)
        os.replace(building, p.db)
    except RegistryError as exc:
        raise MigrationError(f"cannot migrate the files of {p.ifname} to a registry: {exc}") from None
    finally:
        for leftover in (building, building + "-wal", building + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _client(p: Paths, reg, peer, n: int, settings: ServerSettings, result: Migration) -> None:
    name = peer.name or f"peer{n}"
    pools = [ipaddress.ip_network(x) for x in settings.pools]
    hosts, others = [], []
    for a in peer.allowed_ips:
        if a.network.num_addresses == 1 and any(a.ip in net for net in pools):
            hosts.append(str(a.ip))
        else:
            others.append(str(a))
    if others:
        result.notes.append(f"client {name}: AllowedIPs {', '.join(others)} outside the pools were not carried over")
    private_key, created = None, None
    path = os.path.join(p.legacy_clients, f"{name}.conf")
    if os.path.exists(path):
        try:
            own = load_config(path).interface.private_key
            if DH_PUBKEY(own) == peer.public_key:
                private_key = encode_key(own)
                created = os.stat(path).st_mtime
            else:
                result.notes.append(f"client {name}: {path} holds another key; show-client cannot print it")
        except ConfigError as exc:
            result.notes.append(f"client {name}: {exc}")
    reg.add_client(name, encode_key(peer.public_key),
                   preshared_key=encode_key(peer.preshared_key) if peer.preshared_key else None,
                   private_key=private_key, addresses=hosts, now=created)
    result.clients += 1
