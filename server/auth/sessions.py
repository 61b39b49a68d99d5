"""Login sessions: the core. No I/O, no clock, no randomness it cannot be given.

The caller (the daemon, or service.py on its behalf) feeds in events with the
time, and gets back what to do:

    login(accepted, client, now)   -> [Grant, AccountStart]   (+ Revoke/Stop of a session it replaces)
    tick(now, counters)            -> [Revoke, AccountStop] for sessions that ended,
                                      [AccountInterim] for those due an update
    logout(client, now) / kick(user|client|address, now) / remove_client / stop_all
    resume(now)                    -> [Grant] for stored sessions still valid (daemon restart)

    Grant(session)            let the client's addresses reach what session.groups allow
    Revoke(session, cause)    put the client back to login-only
    Account(record)           send an accounting record (start / interim / stop)

A session lasts `lifetime` (default 12 h; RADIUS Session-Timeout overrides) and
ends when idle for `idle_timeout` (default 30 min; RADIUS Idle-Timeout).

Rules kept here:
- a client has at most one session: a new login replaces the old one;
- activity is read from the client's byte counters (cumulative, as per-peer
  rx/tx are); counters going down mean the peer was re-added and count from 0;
  WireGuard keepalives (32 bytes each way, up to one a second) are not
  activity: traffic under `keepalive_allowance` bytes per second is ignored,
  so a phone with PersistentKeepalive still goes idle;
- Acct-Input-Octets are bytes from the client (the server's rx), Output to it;
- every state change goes through SessionStore.put/remove, so the registry can
  back it (MemorySessionStore for tests and single servers).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Protocol

from .backend import Accepted, AccountingRecord, ClientInfo

DEFAULT_LIFETIME = 12 * 3600
DEFAULT_IDLE = 30 * 60
DEFAULT_INTERIM = 600
KEEPALIVE_ALLOWANCE = 64  # bytes per second: a keepalive each way each second


@dataclass(frozen=True)
class SessionPolicy:
    lifetime: int = DEFAULT_LIFETIME
    idle_timeout: int = DEFAULT_IDLE
    interim_interval: int | None = DEFAULT_INTERIM  # None: no interim updates unless RADIUS asks
    keepalive_allowance: int = KEEPALIVE_ALLOWANCE


@dataclass(frozen=True)
class Session:
    session_id: str
    user: str
    groups: tuple[str, ...]
    client: ClientInfo
    started: float
    expires: float
    idle_timeout: int
    last_activity: float
    interim_interval: int | None = None
    next_interim: float | None = None
    input_octets: int = 0  # from the client, since the session started
    output_octets: int = 0
    rx_last: int | None = None  # the caller's cumulative counters at the last sample
    tx_last: int | None = None
    sampled_at: float = 0.0
    accounting_class: tuple[bytes, ...] = field(default=(), repr=False)
    backend: str = ""

    def idle_expires(self) -> float:
        return self.last_activity + self.idle_timeout

    def summary(self) -> dict:
        """What `tunnel server sessions` shows (JSON-able; times are epoch seconds)."""
        return {"user": self.user, "groups": list(self.groups), "client": self.client.name,
                "public_key": self.client.public_key, "address": self.client.address,
                "session_id": self.session_id, "since": self.started, "expires": self.expires,
                "idle_expires": self.idle_expires(), "rx_bytes": self.input_octets,
                "tx_bytes": self.output_octets, "backend": self.backend}


@dataclass(frozen=True)
class Grant:
    session: Session


@dataclass(frozen=True)
class Revoke:
    session: Session
    cause: str  # a backend.TERMINATE_CAUSES key


@dataclass(frozen=True)
class Account:
    record: AccountingRecord


Action = Grant | Revoke | Account


class SessionStore(Protocol):
    """Sessions by client name. The registry's sessions table implements this."""

    def get(self, client: str) -> Session | None: ...

    def put(self, session: Session) -> None: ...

    def remove(self, client: str) -> None: ...

    def all(self) -> list[Session]: ...


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, client: str) -> Session | None:
        return self._sessions.get(client)

    def put(self, session: Session) -> None:
        with self._lock:
            self._sessions[session.client.name] = session

    def remove(self, client: str) -> None:
        with self._lock:
            self._sessions.pop(client, None)

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())


def new_session_id(now: float) -> str:
    """Unique enough across gateways and restarts: time plus 64 random bits."""
    return f"{int(now):08x}{os.urandom(8).hex()}"


def _record(kind: str, s: Session, now: float, cause: str | None = None) -> Account:
    return Account(AccountingRecord(
        kind=kind, session_id=s.session_id, user=s.user, client=s.client,
        input_octets=s.input_octets, output_octets=s.output_octets,
        session_time=max(0, int(now - s.started)), terminate_cause=cause,
        accounting_class=s.accounting_class, event_time=now))


class SessionManager:
    def __init__(self, store: SessionStore | None = None, policy: SessionPolicy | None = None):
        self.store = store if store is not None else MemorySessionStore()
        self.policy = policy or SessionPolicy()

    # -- events ------------------------------------------------------------

    def login(self, accepted: Accepted, client: ClientInfo, now: float, *, backend: str = "",
              counters: tuple[int, int] | None = None, session_id: str | None = None) -> tuple[Session, list[Action]]:
        """Open a session for a successful authentication. `counters`: the client's (rx, tx) now."""
        actions: list[Action] = []
        old = self.store.get(client.name)
        if old is not None:
            actions += self._end(old, now, "user-request", counters)
        p = self.policy
        lifetime = accepted.session_timeout or p.lifetime
        idle = accepted.idle_timeout or p.idle_timeout
        interim = accepted.interim_interval or p.interim_interval
        session = Session(
            session_id=session_id or new_session_id(now), user=accepted.user, groups=tuple(accepted.groups),
            client=client, started=now, expires=now + lifetime, idle_timeout=idle, last_activity=now,
            interim_interval=interim, next_interim=(now + interim) if interim else None,
            rx_last=counters[0] if counters else None, tx_last=counters[1] if counters else None,
            sampled_at=now, accounting_class=tuple(accepted.accounting_class), backend=backend)
        self.store.put(session)
        actions += [Grant(session), _record("start", session, now)]
        return session, actions

    def tick(self, now: float, counters: Mapping[str, tuple[int, int]] | None = None) -> list[Action]:
        """Feed byte counters (client name -> cumulative (rx, tx)) and end or account what is due."""
        actions: list[Action] = []
        for s in self.store.all():
            if counters and s.client.name in counters:
                s = self._sample(s, counters[s.client.name], now)
            if now >= s.expires:
                actions += self._end(s, now, "session-timeout")
            elif now >= s.idle_expires():
                actions += self._end(s, now, "idle-timeout")
            else:
                if s.next_interim is not None and now >= s.next_interim:
                    # Missed intervals are not sent in a burst: the next one is an interval from now.
                    s = replace(s, next_interim=now + s.interim_interval)
                    actions.append(_record("interim", s, now))
                self.store.put(s)
        return actions

    def logout(self, client: str, now: float, counters: tuple[int, int] | None = None) -> list[Action]:
        s = self.store.get(client)
        return self._end(s, now, "user-request", counters) if s else []

    def kick(self, target: str, now: float) -> list[Action]:
        """End the sessions of a user, a client (name or public key) or a tunnel address."""
        actions: list[Action] = []
        for s in self.store.all():
            if target in (s.user, s.client.name, s.client.public_key, s.client.address):
                actions += self._end(s, now, "admin-reset")
        return actions

    def remove_client(self, client: str, now: float) -> list[Action]:
        s = self.store.get(client)
        return self._end(s, now, "nas-request") if s else []

    def stop_all(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for s in self.store.all():
            actions += self._end(s, now, "admin-reboot")
        return actions

    def resume(self, now: float) -> list[Action]:
        """After a restart: grant the stored sessions still valid, end the others."""
        actions: list[Action] = []
        for s in self.store.all():
            if now >= s.expires:
                actions += self._end(s, now, "session-timeout")
            elif now >= s.idle_expires():
                actions += self._end(s, now, "idle-timeout")
            else:
                # The daemon's counters restarted from zero: re-baseline at the next sample.
                s = replace(s, rx_last=None, tx_last=None, sampled_at=now)
                self.store.put(s)
                actions.append(Grant(s))
        return actions

    # -- queries -----------------------------------------------------------

    def get(self, client: str) -> Session | None:
        return self.store.get(client)

    def sessions(self) -> list[Session]:
        return sorted(self.store.all(), key=lambda s: (s.user, s.client.name))

    # -- inside ------------------------------------------------------------

    def _sample(self, s: Session, counters: tuple[int, int], now: float) -> Session:
        rx, tx = counters
        if s.rx_last is None or s.tx_last is None:
            return replace(s, rx_last=rx, tx_last=tx, sampled_at=now)
        d_rx = rx - s.rx_last if rx >= s.rx_last else rx
        d_tx = tx - s.tx_last if tx >= s.tx_last else tx
        elapsed = max(0.0, now - s.sampled_at)
        active = d_rx + d_tx > self.policy.keepalive_allowance * (elapsed + 1)
        return replace(s, input_octets=s.input_octets + d_rx, output_octets=s.output_octets + d_tx,
                       rx_last=rx, tx_last=tx, sampled_at=now,
                       last_activity=now if active else s.last_activity)

    def _end(self, s: Session, now: float, cause: str, counters: tuple[int, int] | None = None) -> list[Action]:
        if counters is not None:
            s = self._sample(s, counters, now)
        self.store.remove(s.client.name)
        return [Revoke(s, cause), _record("stop", s, now, cause)]


def grants(actions: Iterable[Action]) -> list[Grant]:
    return [a for a in actions if isinstance(a, Grant)]
