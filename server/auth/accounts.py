"""Local accounts: a name, a scrypt hash, groups and an optional TOTP secret.

The functions here are what `tunnel server user add|passwd|totp|remove|list`
call; they take the store as an argument (AccountStore below). The lead's
registry implements the same interface; MemoryAccountStore is for tests and
accountfile.JsonAccountStore keeps accounts in a 0600 file.

Rules kept here:
- names and groups are checked here, once, for every store;
- passwords are never stored, logged or returned: only hashes go to the store;
- `advance_totp_step` is a compare-and-set in the store, so a code used on one
  gateway cannot be used again on another sharing the registry.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from typing import Protocol

from . import passwords, totp

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
DEFAULT_ISSUER = "tunnel"


class AccountError(ValueError):
    """A refused account operation; str() is the message for the user."""


@dataclass(frozen=True)
class Account:
    name: str
    password_hash: str = field(repr=False)
    groups: tuple[str, ...] = ()
    totp_secret: str | None = field(default=None, repr=False)
    totp_last_step: int | None = None  # the step of the last code accepted


class AccountStore(Protocol):
    def get(self, name: str) -> Account | None: ...

    def add(self, account: Account) -> None:
        """Raise AccountError if the name exists."""
        ...

    def replace(self, account: Account) -> None:
        """Raise AccountError if the name does not exist."""
        ...

    def remove(self, name: str) -> bool: ...

    def all(self) -> list[Account]: ...

    def advance_totp_step(self, name: str, step: int) -> bool:
        """Record `step` as used if it is later than the stored one; False if it is not (a replay)."""
        ...


class MemoryAccountStore:
    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def add(self, account: Account) -> None:
        with self._lock:
            if account.name in self._accounts:
                raise AccountError(f"a user named {account.name!r} already exists")
            self._accounts[account.name] = account

    def replace(self, account: Account) -> None:
        with self._lock:
            if account.name not in self._accounts:
                raise AccountError(f"no user named {account.name!r}")
            self._accounts[account.name] = account

    def remove(self, name: str) -> bool:
        with self._lock:
            return self._accounts.pop(name, None) is not None

    def all(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.name)

    def advance_totp_step(self, name: str, step: int) -> bool:
        with self._lock:
            account = self._accounts.get(name)
            if account is None or (account.totp_last_step is not None and step <= account.totp_last_step):
                return False
            self._accounts[name] = replace(account, totp_last_step=step)
            return True


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name or ""):
        raise AccountError(f"{name!r} is not a valid user name (letters, digits, _ . @ + -; at most 64)")
    return name


def check_groups(groups) -> tuple[str, ...]:
    out: list[str] = []
    for g in groups:
        for part in str(g).split(","):
            part = part.strip()
            if not part:
                continue
            if not GROUP_NAME.fullmatch(part):
                raise AccountError(f"{part!r} is not a valid group name (letters, digits, _ . -; at most 32)")
            if part not in out:
                out.append(part)
    return tuple(out)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short (at least {MIN_PASSWORD} characters)")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"the password is too long (at most {MAX_PASSWORD} characters)")
    return password


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str = field(repr=False)
    uri: str = field(repr=False)  # otpauth://... to show as a QR code


def _enrol(name: str, issuer: str) -> TotpEnrolment:
    secret = totp.new_secret()
    return TotpEnrolment(secret, totp.otpauth_uri(secret, name, issuer))


def add_user(store: AccountStore, name: str, password: str, groups=(), *, with_totp: bool = False,
             issuer: str = DEFAULT_ISSUER) -> TotpEnrolment | None:
    check_user_name(name)
    groups = check_groups(groups)
    check_password(password)
    if store.get(name) is not None:
        raise AccountError(f"a user named {name!r} already exists")
    enrolment = _enrol(name, issuer) if with_totp else None
    store.add(Account(name=name, password_hash=passwords.hash_password(password), groups=groups,
                      totp_secret=enrolment.secret if enrolment else None))
    return enrolment


def _existing(store: AccountStore, name: str) -> Account:
    account = store.get(name)
    if account is None:
        raise AccountError(f"no user named {name!r}")
    return account


def set_password(store: AccountStore, name: str, password: str) -> None:
    account = _existing(store, name)
    check_password(password)
    store.replace(replace(account, password_hash=passwords.hash_password(password)))


def set_groups(store: AccountStore, name: str, groups) -> None:
    account = _existing(store, name)
    store.replace(replace(account, groups=check_groups(groups)))


def set_totp(store: AccountStore, name: str, enabled: bool, *, issuer: str = DEFAULT_ISSUER) -> TotpEnrolment | None:
    """A new TOTP secret (returned, to show once), or none at all."""
    account = _existing(store, name)
    enrolment = _enrol(name, issuer) if enabled else None
    store.replace(replace(account, totp_secret=enrolment.secret if enrolment else None, totp_last_step=None))
    return enrolment


def remove_user(store: AccountStore, name: str) -> None:
    if not store.remove(name):
        raise AccountError(f"no user named {name!r}")


@dataclass(frozen=True)
class UserSummary:
    name: str
    groups: tuple[str, ...]
    totp: bool


def list_users(store: AccountStore) -> list[UserSummary]:
    return [UserSummary(a.name, a.groups, a.totp_secret is not None) for a in store.all()]
