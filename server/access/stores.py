"""The registry behind the login code's storage interfaces (server/auth: AccountStore, FailureStore).

Rules kept here:
- accounts live in the registry's users table: `tunnel server user ...` on any gateway changes
  them for all, and a one-time code accepted on one gateway is refused on every other
  (advance_totp_step is a compare-and-set in the registry);
- failed logins and lockouts are shared the same way; while the registry cannot be reached they
  are counted in memory instead (a lockout must not become an open door, nor a crash);
- registry errors become the login code's own AccountError with one line of text.
"""

from __future__ import annotations

import logging

from server.auth.accounts import Account, AccountError
from server.auth.lockout import MemoryFailureStore
from server.registry import Conflict, NotFound, Registry, RegistryError

log = logging.getLogger("tunnel.auth")


def _subject(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def _account(user) -> Account:
    return Account(name=user.name, password_hash=user.password_hash, groups=tuple(user.groups),
                   totp_secret=user.totp_secret, totp_last_step=user.totp_last_step)


class RegistryAccountStore:
    """server.auth.accounts.AccountStore on the registry's users."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def get(self, name: str) -> Account | None:
        try:
            user = self.registry.user(name)
        except NotFound:
            return None
        except RegistryError as exc:
            raise AccountError(str(exc)) from None
        return None if user.disabled else _account(user)

    def add(self, account: Account) -> None:
        try:
            self.registry.add_user(account.name, account.password_hash, totp_secret=account.totp_secret,
                                   groups=account.groups)
        except Conflict:
            raise AccountError(f"a user named {account.name!r} already exists") from None
        except RegistryError as exc:
            raise AccountError(str(exc)) from None

    def replace(self, account: Account) -> None:
        try:
            self.registry.update_user(account.name, password_hash=account.password_hash,
                                      totp_secret=account.totp_secret, groups=account.groups)
        except NotFound:
            raise AccountError(f"no user named {account.name!r}") from None
        except RegistryError as exc:
            raise AccountError(str(exc)) from None

    def remove(self, name: str) -> bool:
        try:
            self.registry.remove_user(name)
            return True
        except NotFound:
            return False
        except RegistryError as exc:
            raise AccountError(str(exc)) from None

    def all(self) -> list[Account]:
        try:
            return [_account(u) for u in self.registry.users()]
        except RegistryError as exc:
            raise AccountError(str(exc)) from None

    def advance_totp_step(self, name: str, step: int) -> bool:
        try:
            return self.registry.advance_totp_step(name, step)
        except RegistryError as exc:
            raise AccountError(str(exc)) from None


class RegistryFailureStore:
    """server.auth.lockout.FailureStore on the registry, with memory while it is unreachable."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.fallback = MemoryFailureStore()

    def _try(self, what: str, fn, fallback):
        try:
            return fn()
        except RegistryError as exc:
            log.warning("lockout: %s in memory only: %s", what, exc)
            return fallback()

    def add_failure(self, kind: str, key: str, at: float) -> None:
        self.fallback.add_failure(kind, key, at)
        self._try("failures counted", lambda: self.registry.record_failure(_subject(kind, key), now=at), lambda: None)

    def count_failures(self, kind: str, key: str, since: float) -> int:
        local = self.fallback.count_failures(kind, key, since)
        shared = self._try("failures counted", lambda: self.registry.failures(_subject(kind, key), since),
                           lambda: local)
        return max(local, shared)

    def clear_failures(self, kind: str, key: str) -> None:
        self.fallback.clear_failures(kind, key)
        self._try("failures cleared", lambda: self.registry.clear_failures(_subject(kind, key)), lambda: None)

    def set_lock(self, kind: str, key: str, until: float) -> None:
        self.fallback.set_lock(kind, key, until)
        self._try("lock kept", lambda: self.registry.set_lock(_subject(kind, key), until), lambda: None)

    def lock_until(self, kind: str, key: str) -> float | None:
        local = self.fallback.lock_until(kind, key)
        shared = self._try("lock read", lambda: self.registry.lock_until(_subject(kind, key)), lambda: local)
        found = [t for t in (local, shared) if t is not None]
        return max(found) if found else None
