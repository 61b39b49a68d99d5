"""The registry over SQL: everything both backends share.

A backend supplies a connection, how to begin a read and a write
transaction, what to do after a change (PostgreSQL: NOTIFY), how to wait
for a change, and how to turn its driver's errors into ours.

Rules kept here:
- a write transaction first bumps meta.revision with an UPDATE: that row
  lock (PostgreSQL) or the database write lock taken by BEGIN IMMEDIATE
  (SQLite) serialises every writer, so allocating an address by reading
  the used ones and inserting the next is safe across processes and
  gateways, and UNIQUE constraints stay the last guard;
- a soft write (endpoints, heartbeats, counters) takes no revision;
- queries are written with `?`; the PostgreSQL backend rewrites them to
  `%s` (no query here holds a literal question mark).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import secrets
import socket
import sys
import threading
import time
from typing import Any, Iterable, Iterator

from .base import _KEEP, Registry
from .model import (
    Client,
    Conflict,
    Gateway,
    NotFound,
    PeerEndpoint,
    Policy,
    RegistryError,
    ServerSettings,
    Session,
    Snapshot,
    User,
    check_name,
)
from .schema import MIGRATIONS, SCHEMA_VERSION, SCHEMA_VERSION_TABLE
from tunnel.protocol.crypto import DH_PUBKEY, decode_key, encode_key

FAILURE_MEMORY = 86400.0  # login failures older than this are pruned



def _intern(value):
    return sys.intern(value) if type(value) is str else value

class Tx:
    """A cursor in one transaction: all(), one(), run()."""

    def __init__(self, cursor, rewrite):
        self._cur = cursor
        self._rewrite = rewrite

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        self._cur.execute(self._rewrite(sql), params)
        return list(self._cur.fetchall())

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        self._cur.execute(self._rewrite(sql), params)
        return self._cur.fetchone()

    def run(self, sql: str, params: tuple = ()) -> int:
        self._cur.execute(self._rewrite(sql), params)
        return self._cur.rowcount


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


class SqlRegistry(Registry):
    """Backends implement the methods marked `backend`."""

    def __init__(self, location: str):
        self.location = location
        self._lock = threading.RLock()

    # -- backend ------------------------------------------------------------------------

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Tx]:  # backend
        raise NotImplementedError

    def _after_bump(self, tx: Tx, revision: int) -> None:  # backend: tell other machines
        pass

    def _migration_lock(self, tx: Tx) -> None:  # backend: serialise concurrent first opens
        pass

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, bump: bool = True) -> Iterator[Tx]:
        with self._lock, self._transaction(write=True) as tx:
            if bump:
                (revision,) = tx.one("UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision")
            yield tx
            if bump:
                self._after_bump(tx, revision)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Tx]:
        with self._lock, self._transaction(write=False) as tx:
            yield tx

    def _migrate(self) -> None:
        with self._lock, self._transaction(write=True) as tx:
            self._migration_lock(tx)
            tx.run(SCHEMA_VERSION_TABLE)
            row = tx.one("SELECT schema_version FROM meta WHERE id = 1")
            if row is None:
                tx.run("INSERT INTO meta (id, schema_version, revision) VALUES (1, 0, 0)")
                version = 0
            else:
                version = row[0]
            if version > SCHEMA_VERSION:
                raise RegistryError(f"registry {self.location} has schema version {version}, newer than this "
                                    f"program knows ({SCHEMA_VERSION}): upgrade tunnel")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    tx.run(statement)
            if version != SCHEMA_VERSION:
                tx.run("UPDATE meta SET schema_version = ? WHERE id = 1", (SCHEMA_VERSION,))

    # -- the change feed ----------------------------------------------------------------

    def revision(self) -> int:
        with self._read() as tx:
            return int(tx.one("SELECT revision FROM meta WHERE id = 1")[0])

    def snapshot(self) -> Snapshot:
        with self._read() as tx:
            revision = int(tx.one("SELECT revision FROM meta WHERE id = 1")[0])
            settings = self._settings(tx)
            return Snapshot(
                revision=revision,
                settings=settings,
                clients=tuple(self._clients(tx)),
                policy=self._policy(tx),
                sessions=tuple(self._sessions(tx, active=True)),
                gateways=tuple(self._gateways(tx)),
            )

    # -- settings ---------------------------------------------------------------------

    def initialized(self) -> bool:
        with self._read() as tx:
            return tx.one("SELECT 1 FROM settings WHERE key = 'private_key'") is not None

    def initialize(self, settings: ServerSettings, *, force: bool = False) -> None:
        with self._write() as tx:
            if tx.one("SELECT 1 FROM settings WHERE key = 'private_key'") is not None:
                if not force:
                    raise Conflict(f"registry {self.location} already holds a server (use --force to replace it "
                                   "and forget its clients)")
                for table in ("client_groups", "clients", "policy", "user_groups", "users", "login_failures",
                              "sessions", "peer_endpoints", "gateways", "settings"):
                    tx.run(f"DELETE FROM {table}")
            self._put_settings(tx, _settings_values(settings))

    def settings(self) -> ServerSettings:
        with self._read() as tx:
            return self._settings(tx)

    def update_settings(self, **changes) -> ServerSettings:
        with self._write() as tx:
            current = self._settings(tx)
            values = _settings_values(current)
            extra = dict(current.extra)
            for key, value in changes.items():
                if key in ServerSettings.FIELDS:
                    values[key] = value
                else:
                    extra[key] = value
            values["extra"] = extra
            self._put_settings(tx, values)
            return _settings_from(values)

    def _put_settings(self, tx: Tx, values: dict) -> None:
        extra = values.pop("extra", {}) or {}
        rows = {**values, **{f"extra.{k}": v for k, v in extra.items()}}
        tx.run("DELETE FROM settings")
        for key, value in rows.items():
            tx.run("INSERT INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def _settings(self, tx: Tx) -> ServerSettings:
        rows = {k: json.loads(v) for k, v in tx.all("SELECT key, value FROM settings")}
        if "private_key" not in rows:
            raise NotFound(f"registry {self.location} holds no server yet: run `tunnel server init`")
        values: dict[str, Any] = {k: v for k, v in rows.items() if k in ServerSettings.FIELDS}
        values["extra"] = {k[6:]: v for k, v in rows.items() if k.startswith("extra.")}
        return _settings_from(values)

    # -- clients ----------------------------------------------------------------------

    _CLIENT_COLUMNS = ("name, public_key, preshared_key, private_key, ipv4, ipv6, created, expires_at, disabled, "
                       "options")

    def _clients(self, tx: Tx, name: str | None = None) -> list[Client]:
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        rows = tx.all(f"SELECT {self._CLIENT_COLUMNS} FROM clients {where} ORDER BY created, name", params)
        groups: dict[str, list[str]] = {}
        gwhere = "WHERE client = ?" if name is not None else ""
        for client, grp in tx.all(f"SELECT client, grp FROM client_groups {gwhere} ORDER BY grp", params):
            groups.setdefault(client, []).append(grp)
        # Most clients have no options: "{}" needs no JSON parser (10,000 a snapshot).
        # Interned: a new snapshot shares its strings with the one still held (the peers, the policy),
        # instead of a second copy of every client's name, keys and addresses while both live.
        return [Client(name=_intern(r[0]), public_key=_intern(r[1]), preshared_key=_intern(r[2]), private_key=r[3],
                       ipv4=_intern(r[4]), ipv6=_intern(r[5]), created=r[6], expires_at=r[7], disabled=bool(r[8]),
                       options={} if r[9] in (None, "", "{}") else json.loads(r[9]),
                       groups=tuple(groups.get(r[0], ())))
                for r in rows]

    def _client(self, tx: Tx, name: str) -> Client:
        found = self._clients(tx, name)
        if not found:
            raise NotFound(f"no client named {name!r}")
        return found[0]

    def add_client(self, name, public_key, *, preshared_key=None, private_key=None, groups=(),
                   expires_at=None, addresses=None, options=None, now=None) -> Client:
        check_name("client", name)
        groups = _groups(groups)
        with self._write() as tx:
            settings = self._settings(tx)
            if tx.one("SELECT 1 FROM clients WHERE name = ?", (name,)):
                raise Conflict(f"a client named {name!r} already exists")
            if tx.one("SELECT 1 FROM clients WHERE public_key = ?", (public_key,)):
                raise Conflict(f"another client already has the public key of {name!r}")
            if public_key == _public_of(settings.private_key):
                raise Conflict("a client cannot have the server's own public key")
            chosen = self._allocate(tx, settings, addresses)
            tx.run(f"INSERT INTO clients ({self._CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, public_key, preshared_key, private_key, chosen.get(4), chosen.get(6), _now(now),
                    expires_at, 0, json.dumps(options or {})))
            for g in groups:
                tx.run("INSERT INTO client_groups (client, grp) VALUES (?, ?)", (name, g))
            return self._client(tx, name)

    def _allocate(self, tx: Tx, settings: ServerSettings, wanted: Iterable[str] | None) -> dict[int, str]:
        """One host address per pool: the lowest free one, or the wanted ones checked."""
        chosen: dict[int, str] = {}
        servers = {ipaddress.ip_interface(a).ip for a in settings.server_addresses()}
        if wanted is not None:
            for text in wanted:
                ip = ipaddress.ip_interface(text).ip
                pool = settings.pool(ip.version)
                if pool is None or ip not in ipaddress.ip_network(pool) or ip in servers or ip.version in chosen:
                    raise Conflict(f"address {ip} is not a free client address of the pools")
                column = f"ipv{ip.version}"
                if tx.one(f"SELECT 1 FROM clients WHERE {column} = ?", (str(ip),)):
                    raise Conflict(f"address {ip} is taken")
                chosen[ip.version] = str(ip)
            return chosen
        for pool in settings.pools:
            net = ipaddress.ip_network(pool)
            column = f"ipv{net.version}"
            # As integers, parsed by inet_pton: 10,000 clients are 10,000 addresses to step over.
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            used = {int.from_bytes(socket.inet_pton(family, r[0]), "big")
                    for r in tx.all(f"SELECT {column} FROM clients WHERE {column} IS NOT NULL")}
            used |= {int(ip) for ip in servers if ip.version == net.version}
            first, last = _host_range(net)
            candidate = first
            while candidate <= last and candidate in used:
                candidate += 1
            if candidate > last:
                raise Conflict(f"pool {pool} is full")
            chosen[net.version] = str(ipaddress.IPv4Address(candidate) if net.version == 4
                                      else ipaddress.IPv6Address(candidate))
        return chosen

    def client(self, name: str) -> Client:
        with self._read() as tx:
            return self._client(tx, name)

    def clients(self) -> list[Client]:
        with self._read() as tx:
            return self._clients(tx)

    def remove_client(self, name: str) -> Client:
        with self._write() as tx:
            client = self._client(tx, name)
            tx.run("DELETE FROM client_groups WHERE client = ?", (name,))
            tx.run("DELETE FROM clients WHERE name = ?", (name,))
            return client

    def set_groups(self, name: str, groups: Iterable[str]) -> Client:
        groups = _groups(groups)
        with self._write() as tx:
            self._client(tx, name)
            tx.run("DELETE FROM client_groups WHERE client = ?", (name,))
            for g in groups:
                tx.run("INSERT INTO client_groups (client, grp) VALUES (?, ?)", (name, g))
            return self._client(tx, name)

    def set_expiry(self, name: str, expires_at: float | None) -> Client:
        with self._write() as tx:
            self._client(tx, name)
            tx.run("UPDATE clients SET expires_at = ? WHERE name = ?", (expires_at, name))
            return self._client(tx, name)

    def set_disabled(self, name: str, disabled: bool) -> Client:
        with self._write() as tx:
            self._client(tx, name)
            tx.run("UPDATE clients SET disabled = ? WHERE name = ?", (int(bool(disabled)), name))
            return self._client(tx, name)

    # -- policy -----------------------------------------------------------------------

    def _policy(self, tx: Tx) -> Policy | None:
        row = tx.one("SELECT text, sha256, version, applied_at FROM policy WHERE id = 1")
        return Policy(*row) if row else None

    def policy(self) -> Policy | None:
        with self._read() as tx:
            return self._policy(tx)

    def set_policy(self, text: str, *, now: float | None = None) -> Policy:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._write() as tx:
            old = self._policy(tx)
            version = (old.version + 1) if old else 1
            tx.run("DELETE FROM policy")
            tx.run("INSERT INTO policy (id, text, sha256, version, applied_at) VALUES (1, ?, ?, ?, ?)",
                   (text, digest, version, _now(now)))
            return self._policy(tx)  # type: ignore[return-value]

    def clear_policy(self) -> None:
        with self._write() as tx:
            tx.run("DELETE FROM policy")

    # -- users ------------------------------------------------------------------------

    def _users(self, tx: Tx, name: str | None = None) -> list[User]:
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        rows = tx.all(f"SELECT name, password_hash, totp_secret, disabled, created, totp_last_step FROM users {where} "
                      "ORDER BY name", params)
        groups: dict[str, list[str]] = {}
        gwhere = "WHERE user_name = ?" if name is not None else ""
        for user, grp in tx.all(f"SELECT user_name, grp FROM user_groups {gwhere} ORDER BY grp", params):
            groups.setdefault(user, []).append(grp)
        return [User(name=r[0], password_hash=r[1], totp_secret=r[2], disabled=bool(r[3]), created=r[4],
                     groups=tuple(groups.get(r[0], ())), totp_last_step=r[5]) for r in rows]

    def _user(self, tx: Tx, name: str) -> User:
        found = self._users(tx, name)
        if not found:
            raise NotFound(f"no user named {name!r}")
        return found[0]

    def add_user(self, name, password_hash, *, totp_secret=None, groups=(), now=None) -> User:
        check_name("user", name)
        groups = _groups(groups)
        with self._write() as tx:
            if tx.one("SELECT 1 FROM users WHERE name = ?", (name,)):
                raise Conflict(f"a user named {name!r} already exists")
            tx.run("INSERT INTO users (name, password_hash, totp_secret, disabled, created) VALUES (?, ?, ?, 0, ?)",
                   (name, password_hash, totp_secret, _now(now)))
            for g in groups:
                tx.run("INSERT INTO user_groups (user_name, grp) VALUES (?, ?)", (name, g))
            return self._user(tx, name)

    def user(self, name: str) -> User:
        with self._read() as tx:
            return self._user(tx, name)

    def users(self) -> list[User]:
        with self._read() as tx:
            return self._users(tx)

    def update_user(self, name, *, password_hash=_KEEP, totp_secret=_KEEP, groups=_KEEP, disabled=_KEEP) -> User:
        with self._write() as tx:
            self._user(tx, name)
            if password_hash is not _KEEP:
                tx.run("UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name))
            if totp_secret is not _KEEP:
                tx.run("UPDATE users SET totp_secret = ?, totp_last_step = NULL WHERE name = ?", (totp_secret, name))
            if disabled is not _KEEP:
                tx.run("UPDATE users SET disabled = ? WHERE name = ?", (int(bool(disabled)), name))
            if groups is not _KEEP:
                tx.run("DELETE FROM user_groups WHERE user_name = ?", (name,))
                for g in _groups(groups):
                    tx.run("INSERT INTO user_groups (user_name, grp) VALUES (?, ?)", (name, g))
            return self._user(tx, name)

    def remove_user(self, name: str) -> None:
        with self._write() as tx:
            self._user(tx, name)
            tx.run("DELETE FROM user_groups WHERE user_name = ?", (name,))
            tx.run("DELETE FROM users WHERE name = ?", (name,))

    def record_failure(self, subject: str, *, now: float | None = None) -> None:
        at = _now(now)
        with self._write(bump=False) as tx:
            tx.run("DELETE FROM login_failures WHERE subject = ? AND at < ?", (subject, at - FAILURE_MEMORY))
            tx.run("INSERT INTO login_failures (subject, at) VALUES (?, ?)", (subject, at))

    def failures(self, subject: str, since: float) -> int:
        with self._read() as tx:
            return int(tx.one("SELECT COUNT(*) FROM login_failures WHERE subject = ? AND at >= ?",
                              (subject, since))[0])

    def clear_failures(self, subject: str) -> None:
        with self._write(bump=False) as tx:
            tx.run("DELETE FROM login_failures WHERE subject = ?", (subject,))

    def advance_totp_step(self, name: str, step: int) -> bool:
        # A compare-and-set: a code accepted on one gateway is refused on every other.
        with self._write(bump=False) as tx:
            self._user(tx, name)
            changed = tx.run("UPDATE users SET totp_last_step = ? "
                             "WHERE name = ? AND (totp_last_step IS NULL OR totp_last_step < ?)", (step, name, step))
            return changed == 1

    def set_lock(self, subject: str, until: float) -> None:
        with self._write(bump=False) as tx:
            # Locks past are forgotten here, so probing many names stays bounded.
            tx.run("DELETE FROM login_locks WHERE subject = ? OR until < ?", (subject, time.time()))
            tx.run("INSERT INTO login_locks (subject, until) VALUES (?, ?)", (subject, until))

    def lock_until(self, subject: str) -> float | None:
        with self._read() as tx:
            row = tx.one("SELECT until FROM login_locks WHERE subject = ?", (subject,))
            return None if row is None else float(row[0])

    # -- sessions ---------------------------------------------------------------------

    _SESSION_COLUMNS = ("id, user_name, client, gateway, started, expires_at, idle_timeout, last_activity, "
                        "rx_bytes, tx_bytes, ended_at, end_reason, groups")

    def _sessions(self, tx: Tx, active: bool = True, session_id: str | None = None) -> list[Session]:
        if session_id is not None:
            rows = tx.all(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
        else:
            where = "WHERE ended_at IS NULL" if active else ""
            rows = tx.all(f"SELECT {self._SESSION_COLUMNS} FROM sessions {where} ORDER BY started, id")
        return [Session(*r[:-1], groups=tuple(json.loads(r[-1] or "[]"))) for r in rows]

    def start_session(self, user, client, *, gateway=None, expires_at=None, idle_timeout=None, now=None,
                      groups=(), session_id=None) -> Session:
        at = _now(now)
        session_id = session_id or secrets.token_hex(16)
        groups = json.dumps(sorted(set(groups)))
        with self._write() as tx:
            known = self._sessions(tx, session_id=session_id)
            if known:  # a gateway resuming its sessions after a restart: the registry's word stands
                return known[0]
            # One session per client: a new login replaces the one before it.
            tx.run("UPDATE sessions SET ended_at = ?, end_reason = 'replaced' WHERE client = ? AND ended_at IS NULL",
                   (at, client))
            tx.run(f"INSERT INTO sessions ({self._SESSION_COLUMNS}) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, NULL, NULL, ?)",
                   (session_id, user, client, gateway, at, expires_at, idle_timeout, at, groups))
            return self._sessions(tx, session_id=session_id)[0]

    def touch_sessions(self, updates) -> None:
        with self._write(bump=False) as tx:
            for session_id, last_activity, rx, tx_bytes in updates:
                tx.run("UPDATE sessions SET last_activity = ?, rx_bytes = ?, tx_bytes = ? "
                       "WHERE id = ? AND ended_at IS NULL", (last_activity, rx, tx_bytes, session_id))

    def end_session(self, session_id: str, reason: str, *, now: float | None = None) -> Session:
        with self._write() as tx:
            found = self._sessions(tx, session_id=session_id)
            if not found:
                raise NotFound(f"no session {session_id!r}")
            if found[0].ended_at is None:
                tx.run("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ?", (_now(now), reason, session_id))
            return self._sessions(tx, session_id=session_id)[0]

    def sessions(self, *, active: bool = True) -> list[Session]:
        with self._read() as tx:
            return self._sessions(tx, active=active)

    # -- peer endpoints ---------------------------------------------------------------

    def record_endpoints(self, entries, *, gateway=None) -> None:
        entries = list(entries)
        if not entries:
            return
        with self._write(bump=False) as tx:
            for public_key, endpoint, seen in entries:
                tx.run("INSERT INTO peer_endpoints (public_key, endpoint, last_seen, gateway) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (public_key) DO UPDATE SET endpoint = excluded.endpoint, "
                       "last_seen = excluded.last_seen, gateway = excluded.gateway",
                       (public_key, endpoint, seen, gateway))

    def peer_endpoints(self, seen_since=None) -> dict[str, PeerEndpoint]:
        with self._read() as tx:
            if seen_since is None:
                rows = tx.all("SELECT public_key, endpoint, last_seen, gateway FROM peer_endpoints")
            else:
                rows = tx.all("SELECT public_key, endpoint, last_seen, gateway FROM peer_endpoints WHERE last_seen >= ?",
                              (seen_since,))
            return {r[0]: PeerEndpoint(*r) for r in rows}

    # -- gateways ---------------------------------------------------------------------

    def _gateways(self, tx: Tx, name: str | None = None) -> list[Gateway]:
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        rows = tx.all(f"SELECT name, endpoint, last_heartbeat, ha_role, ha_state, options FROM gateways {where} "
                      "ORDER BY name", params)
        return [Gateway(name=r[0], endpoint=r[1], last_heartbeat=r[2], ha_role=r[3], ha_state=r[4],
                        options=json.loads(r[5] or "{}")) for r in rows]

    def _gateway(self, tx: Tx, name: str) -> Gateway:
        found = self._gateways(tx, name)
        if not found:
            raise NotFound(f"no gateway named {name!r}")
        return found[0]

    def register_gateway(self, name, *, endpoint=None, options=None, now=None) -> Gateway:
        check_name("gateway", name)
        with self._write() as tx:
            if self._gateways(tx, name):
                tx.run("UPDATE gateways SET endpoint = ?, options = ?, last_heartbeat = ? WHERE name = ?",
                       (endpoint, json.dumps(options or {}), _now(now), name))
            else:
                tx.run("INSERT INTO gateways (name, endpoint, last_heartbeat, options) VALUES (?, ?, ?, ?)",
                       (name, endpoint, _now(now), json.dumps(options or {})))
            return self._gateway(tx, name)

    def set_gateway(self, name, *, endpoint=_KEEP, ha_role=_KEEP, ha_state=_KEEP, options=_KEEP) -> Gateway:
        with self._write() as tx:
            self._gateway(tx, name)
            for column, value in (("endpoint", endpoint), ("ha_role", ha_role), ("ha_state", ha_state)):
                if value is not _KEEP:
                    tx.run(f"UPDATE gateways SET {column} = ? WHERE name = ?", (value, name))
            if options is not _KEEP:
                tx.run("UPDATE gateways SET options = ? WHERE name = ?", (json.dumps(options or {}), name))
            return self._gateway(tx, name)

    def heartbeat(self, name, *, ha_state=_KEEP, now=None) -> None:
        with self._write(bump=False) as tx:
            if ha_state is _KEEP:
                n = tx.run("UPDATE gateways SET last_heartbeat = ? WHERE name = ?", (_now(now), name))
            else:
                n = tx.run("UPDATE gateways SET last_heartbeat = ?, ha_state = ? WHERE name = ?",
                           (_now(now), ha_state, name))
            if n == 0:
                raise NotFound(f"no gateway named {name!r}")

    def gateways(self) -> list[Gateway]:
        with self._read() as tx:
            return self._gateways(tx)

    def remove_gateway(self, name: str) -> None:
        with self._write() as tx:
            self._gateway(tx, name)
            tx.run("DELETE FROM gateways WHERE name = ?", (name,))


# --- helpers -----------------------------------------------------------------------------


def _host_range(net) -> tuple[int, int]:
    """The first and last of `net.hosts()`, as integers (no network or broadcast address in IPv4)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen < 31:
        return first + 1, last - 1
    if net.version == 6 and net.prefixlen < 127:
        return first + 1, last  # hosts() leaves out the Subnet-Router anycast address only
    return first, last


def _groups(groups: Iterable[str]) -> list[str]:
    if isinstance(groups, str):
        groups = [groups]
    out: list[str] = []
    for g in groups:
        check_name("group", g)
        if g not in out:
            out.append(g)
    return out


def _settings_values(s: ServerSettings) -> dict:
    values: dict[str, Any] = {k: getattr(s, k) for k in ServerSettings.FIELDS}
    for k in ("pools", "dns", "sites"):
        values[k] = list(values[k])
    values["extra"] = dict(s.extra)
    return values


def _settings_from(values: dict) -> ServerSettings:
    values = dict(values)
    for k in ("pools", "dns", "sites"):
        if k in values:
            values[k] = tuple(values[k])
    return ServerSettings(**values)


def _public_of(private_b64: str) -> str:
    return encode_key(DH_PUBKEY(decode_key(private_b64)))
