"""Local accounts in a JSON file (0600), for a server without a shared registry.

    {"version": 1, "users": {"alice": {"password": "scrypt$...", "groups": [...],
                                       "totp_secret": "...", "totp_last_step": 123}}}

Rules kept here:
- the file holds password hashes and TOTP secrets: it is read with the
  private-file check and replaced atomically 0600 (tunnel/secrets.py);
- every change is read-modify-write under an flock on a lock file beside it,
  so two `tunnel server user` commands, or a command and a login recording a
  used code, never lose each other's change;
- a malformed file is an AccountError naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Iterator

from tunnel.secrets import InsecureFileError, read_private_file, write_private_file

from .accounts import Account, AccountError


class JsonAccountStore:
    def __init__(self, path: str):
        self.path = path
        directory, base = os.path.split(os.path.abspath(path))
        self._lock_path = os.path.join(directory, f".{base}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Account]:
        try:
            data = json.loads(read_private_file(self.path))
        except FileNotFoundError:
            return {}
        except InsecureFileError as exc:
            raise AccountError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise AccountError(f"{self.path}: cannot read the accounts: {exc}") from None
        try:
            return {name: Account(name=name, password_hash=u["password"], groups=tuple(u.get("groups", ())),
                                  totp_secret=u.get("totp_secret"), totp_last_step=u.get("totp_last_step"))
                    for name, u in data["users"].items()}
        except (KeyError, TypeError, AttributeError):
            raise AccountError(f"{self.path}: not an accounts file") from None

    def _write(self, accounts: dict[str, Account]) -> None:
        users = {a.name: {"password": a.password_hash, "groups": list(a.groups), "totp_secret": a.totp_secret,
                          "totp_last_step": a.totp_last_step} for a in accounts.values()}
        write_private_file(self.path, json.dumps({"version": 1, "users": users}, indent=1, sort_keys=True) + "\n")

    def get(self, name: str) -> Account | None:
        return self._read().get(name)

    def all(self) -> list[Account]:
        return sorted(self._read().values(), key=lambda a: a.name)

    def add(self, account: Account) -> None:
        with self._locked():
            accounts = self._read()
            if account.name in accounts:
                raise AccountError(f"a user named {account.name!r} already exists")
            accounts[account.name] = account
            self._write(accounts)

    def replace(self, account: Account) -> None:
        with self._locked():
            accounts = self._read()
            if account.name not in accounts:
                raise AccountError(f"no user named {account.name!r}")
            accounts[account.name] = account
            self._write(accounts)

    def remove(self, name: str) -> bool:
        with self._locked():
            accounts = self._read()
            if accounts.pop(name, None) is None:
                return False
            self._write(accounts)
            return True

    def advance_totp_step(self, name: str, step: int) -> bool:
        with self._locked():
            accounts = self._read()
            account = accounts.get(name)
            if account is None or (account.totp_last_step is not None and step <= account.totp_last_step):
                return False
            accounts[name] = Account(account.name, account.password_hash, account.groups, account.totp_secret, step)
            self._write(accounts)
            return True
