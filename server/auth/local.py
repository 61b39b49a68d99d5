"""The local-accounts backend: scrypt passwords and optional TOTP codes.

A user with TOTP gives the code with the password, or, if they gave only the
password and it was right, is challenged for it (as FreeRADIUS setups do with
Access-Challenge): the state handed back is a random nonce kept here for two
minutes, bound to the user and usable once.

Rules kept here:
- "no such user" costs the same scrypt as a wrong password;
- a code is accepted once: the step is recorded with the store's compare-and-set;
- time comes in as `now`.
"""

from __future__ import annotations

import os
import threading

from . import passwords, totp
from .accounts import AccountStore
from .backend import Accepted, AccountingRecord, AuthRequest, AuthResult, Challenged, Rejected

CHALLENGE_TTL = 120.0
MAX_PENDING = 1024


class LocalBackend:
    name = "local"
    code_with_password = False

    def __init__(self, store: AccountStore):
        self.store = store
        self._pending: dict[bytes, tuple[str, float]] = {}  # nonce -> (user, expires)
        self._lock = threading.Lock()

    def _challenge(self, user: str, now: float) -> Challenged:
        nonce = os.urandom(16)
        with self._lock:
            for key in [k for k, (_u, exp) in self._pending.items() if exp <= now]:
                del self._pending[key]
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[nonce] = (user, now + CHALLENGE_TTL)
        return Challenged("One-time code", nonce)

    def _take_challenge(self, state: bytes, user: str, now: float) -> bool:
        with self._lock:
            entry = self._pending.pop(state, None)
        return entry is not None and entry[0] == user and now < entry[1]

    def authenticate(self, request: AuthRequest, now: float) -> AuthResult:
        account = self.store.get(request.user)
        if request.state:
            # Second round: the password was checked when the challenge was issued.
            if account is None or not self._take_challenge(request.state, request.user, now):
                return Rejected("unknown or expired challenge")
        else:
            if account is None:
                passwords.dummy_verify(request.password)
                return Rejected("no such user")
            try:
                ok = passwords.verify_password(request.password, account.password_hash)
            except passwords.HashFormatError:
                return Rejected("the stored password hash is malformed")
            if not ok:
                return Rejected("wrong password")
        if account.totp_secret:
            if not request.code:
                return self._challenge(account.name, now)
            try:
                step = totp.verify(account.totp_secret, request.code, now)
            except totp.SecretError:
                return Rejected("the stored TOTP secret is malformed")
            if step is None:
                return Rejected("wrong code")
            if not self.store.advance_totp_step(account.name, step):
                return Rejected("code already used")
        return Accepted(user=account.name, groups=account.groups)

    def account(self, record: AccountingRecord) -> None:
        """Local accounts keep no accounting server; the session log is the record."""
