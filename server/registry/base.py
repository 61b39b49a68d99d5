"""The registry's interface: what every backend offers and every feature may call.

Rules kept here (every backend keeps them; tests/test_registry.py checks each):
- every method that changes state is one transaction: all of it or nothing;
- a *change* (settings, clients, policy, users, sessions started/ended,
  gateways joining or changing role) bumps the revision by one and, where
  the backend can, wakes every waiter on every machine; `wait_for_change`
  returns the new revision. High-rate bookkeeping that nothing reconciles
  from (peer endpoints, heartbeats, session counters, login failures) is
  written without a bump, so a thousand peers roaming do not make every
  gateway reload everything;
- waiters do a full reconcile from `snapshot()` on start, after each new
  revision and after RegistryUnavailable: no change is ever replayed;
- an unreachable backend raises RegistryUnavailable within seconds, never
  hangs; anything refused raises NotFound / Conflict / RegistryError with
  one line for the user and no key material;
- `now` arguments exist so tests can pass a clock; None means time.time().
"""

from __future__ import annotations

import abc
from typing import Iterable

from .model import Client, Gateway, PeerEndpoint, Policy, ServerSettings, Session, Snapshot, User

_KEEP: object = object()  # "leave this field as it is" in update methods


class Registry(abc.ABC):
    """One server's state. Not shared between threads without the caller's own care:
    each backend serialises its own calls, but a long wait blocks other calls."""

    location: str  # where it lives, without any password: for messages

    # -- lifecycle and the change feed ----------------------------------------------

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def revision(self) -> int:
        """The number of changes committed so far (0 for a new registry)."""

    @abc.abstractmethod
    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until the revision differs from `since` or `timeout` seconds pass; the revision then."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Settings, clients, policy, active sessions and gateways, read in one transaction."""

    # -- settings ---------------------------------------------------------------------

    @abc.abstractmethod
    def initialized(self) -> bool: ...

    @abc.abstractmethod
    def initialize(self, settings: ServerSettings, *, force: bool = False) -> None:
        """Store a new server's settings; with force, forget everything else first."""

    @abc.abstractmethod
    def settings(self) -> ServerSettings: ...

    @abc.abstractmethod
    def update_settings(self, **changes) -> ServerSettings:
        """Change some of ServerSettings' fields; unknown names go to `extra` (later features)."""

    # -- clients ----------------------------------------------------------------------

    @abc.abstractmethod
    def add_client(self, name: str, public_key: str, *, preshared_key: str | None = None,
                   private_key: str | None = None, groups: Iterable[str] = (),
                   expires_at: float | None = None, addresses: Iterable[str] | None = None,
                   options: dict | None = None, now: float | None = None) -> Client:
        """Add a client with the next free address of each pool (or the given host addresses)."""

    @abc.abstractmethod
    def client(self, name: str) -> Client: ...

    @abc.abstractmethod
    def clients(self) -> list[Client]:
        """Every client, ordered by creation."""

    @abc.abstractmethod
    def remove_client(self, name: str) -> Client: ...

    @abc.abstractmethod
    def set_groups(self, name: str, groups: Iterable[str]) -> Client: ...

    @abc.abstractmethod
    def set_expiry(self, name: str, expires_at: float | None) -> Client: ...

    @abc.abstractmethod
    def set_disabled(self, name: str, disabled: bool) -> Client: ...

    # -- policy -----------------------------------------------------------------------

    @abc.abstractmethod
    def policy(self) -> Policy | None: ...

    @abc.abstractmethod
    def set_policy(self, text: str, *, now: float | None = None) -> Policy: ...

    @abc.abstractmethod
    def clear_policy(self) -> None:
        """No policy any more (every client reaches everything, as before one was set)."""

    # -- users and login failures (issue 11) ------------------------------------------

    @abc.abstractmethod
    def add_user(self, name: str, password_hash: str, *, totp_secret: str | None = None,
                 groups: Iterable[str] = (), now: float | None = None) -> User: ...

    @abc.abstractmethod
    def user(self, name: str) -> User: ...

    @abc.abstractmethod
    def users(self) -> list[User]: ...

    @abc.abstractmethod
    def update_user(self, name: str, *, password_hash=_KEEP, totp_secret=_KEEP, groups=_KEEP,
                    disabled=_KEEP) -> User: ...

    @abc.abstractmethod
    def remove_user(self, name: str) -> None: ...

    @abc.abstractmethod
    def record_failure(self, subject: str, *, now: float | None = None) -> None:
        """One failed login for `subject` ("user:NAME" or "client:PUBKEY"); no revision bump."""

    @abc.abstractmethod
    def failures(self, subject: str, since: float) -> int:
        """Failed logins for `subject` at or after `since` (older ones may be pruned)."""

    @abc.abstractmethod
    def clear_failures(self, subject: str) -> None:
        """Forget `subject`'s failures (not its lock)."""

    @abc.abstractmethod
    def set_lock(self, subject: str, until: float) -> None:
        """Lock `subject` out of login until `until` (every gateway sees it); no revision bump."""

    @abc.abstractmethod
    def lock_until(self, subject: str) -> float | None: ...

    @abc.abstractmethod
    def advance_totp_step(self, name: str, step: int) -> bool:
        """Record `step` as the user's last one-time code if it is later than the stored one; False if
        not (a code used before, here or on another gateway)."""

    # -- sessions (issue 11) ----------------------------------------------------------

    @abc.abstractmethod
    def start_session(self, user: str, client: str, *, gateway: str | None = None,
                      expires_at: float | None = None, idle_timeout: float | None = None,
                      now: float | None = None, groups=(), session_id: str | None = None) -> Session:
        """A new session of `user` on `client` (ending the client's previous one, if any)."""

    @abc.abstractmethod
    def touch_sessions(self, updates: Iterable[tuple[str, float, int, int]]) -> None:
        """(id, last_activity, rx_bytes, tx_bytes) for running sessions; no revision bump."""

    @abc.abstractmethod
    def end_session(self, session_id: str, reason: str, *, now: float | None = None) -> Session:
        """End a session (idempotent: an ended one is returned as it is)."""

    @abc.abstractmethod
    def sessions(self, *, active: bool = True) -> list[Session]: ...

    # -- peer endpoints (issues 15, 16) -----------------------------------------------

    @abc.abstractmethod
    def record_endpoints(self, entries: Iterable[tuple[str, str, float]], *,
                         gateway: str | None = None) -> None:
        """(public_key, endpoint, last_seen) after authenticated handshakes; no revision bump.
        Callers write at most once a minute per peer."""

    @abc.abstractmethod
    def peer_endpoints(self, seen_since: float | None = None) -> dict[str, PeerEndpoint]: ...

    # -- gateways (issues 12, 16) -----------------------------------------------------

    @abc.abstractmethod
    def register_gateway(self, name: str, *, endpoint: str | None = None,
                         options: dict | None = None, now: float | None = None) -> Gateway:
        """Add or update this gateway (join, init)."""

    @abc.abstractmethod
    def set_gateway(self, name: str, *, endpoint=_KEEP, ha_role=_KEEP, ha_state=_KEEP,
                    options=_KEEP) -> Gateway: ...

    @abc.abstractmethod
    def heartbeat(self, name: str, *, ha_state=_KEEP, now: float | None = None) -> None:
        """This gateway is alive; no revision bump (an HA state change should use set_gateway)."""

    @abc.abstractmethod
    def gateways(self) -> list[Gateway]: ...

    @abc.abstractmethod
    def remove_gateway(self, name: str) -> None: ...

    # -- context manager --------------------------------------------------------------

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
