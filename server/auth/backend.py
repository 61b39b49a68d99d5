"""What an authentication backend is asked and what it answers.

A backend (local accounts, RADIUS) gets an AuthRequest and answers one of:
    Accepted    the user, their groups, and limits the backend imposes
    Rejected    wrong user, password or code (counts toward lockout)
    Challenged  the password was right, a one-time code is wanted next
    Unavailable the backend could not decide (server down): not the user's fault

Rules kept here:
- answers carry no secret; `Rejected.reason` and `Unavailable.reason` are for
  logs and may name the user, never a password or code;
- a backend never blocks longer than its own timeout: the caller runs it in a
  worker thread, not on the data plane;
- backends that account (RADIUS) implement `account`; others inherit a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ClientInfo:
    """A WireGuard client as the daemon knows it: the tunnel authenticated it."""

    name: str  # provisioning name, or the public key if it has none
    public_key: str  # base64
    address: str  # the tunnel address the request came from


@dataclass(frozen=True)
class AuthRequest:
    user: str
    password: str = field(repr=False)
    client: ClientInfo
    code: str | None = field(default=None, repr=False)  # one-time code, if the user gave one
    state: bytes | None = field(default=None, repr=False)  # the backend's challenge state, second round


@dataclass(frozen=True)
class Accepted:
    user: str
    groups: tuple[str, ...] = ()
    session_timeout: int | None = None  # seconds; None: the server's default
    idle_timeout: int | None = None
    interim_interval: int | None = None  # RADIUS Acct-Interim-Interval
    # Opaque values to echo in accounting (RADIUS Class, RFC 2865 section 5.25).
    accounting_class: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Rejected:
    reason: str  # for the log: "wrong password", "wrong code", "no such user", ...


@dataclass(frozen=True)
class Challenged:
    message: str  # what to show the user ("One-time code")
    state: bytes = field(default=b"", repr=False)  # handed back in the second round


@dataclass(frozen=True)
class Unavailable:
    reason: str  # "RADIUS server 10.0.0.5:1812 did not answer (3 tries in 6 s)"


AuthResult = Accepted | Rejected | Challenged | Unavailable


@dataclass(frozen=True)
class AccountingRecord:
    """One accounting event for one session (RFC 2866)."""

    kind: str  # "start" | "interim" | "stop"
    session_id: str
    user: str
    client: ClientInfo
    input_octets: int = 0  # from the client (what the server received)
    output_octets: int = 0  # to the client
    session_time: int = 0  # seconds
    terminate_cause: str | None = None  # for "stop": a TERMINATE_CAUSES key
    accounting_class: tuple[bytes, ...] = ()
    event_time: float = 0.0


# RFC 2866 section 5.10 Acct-Terminate-Cause values we use.
TERMINATE_CAUSES = {
    "user-request": 1,  # logout
    "idle-timeout": 4,
    "session-timeout": 5,
    "admin-reset": 6,  # kick
    "admin-reboot": 7,  # the server stops
    "nas-request": 10,  # the client was removed
    "user-error": 17,  # replaced by a new login from the same client
}


class Backend(Protocol):
    """The interface a login backend implements."""

    name: str
    # Whether to ask for the one-time code with the password (RADIUS with the
    # code appended) or only when challenged.
    code_with_password: bool

    def authenticate(self, request: AuthRequest, now: float) -> AuthResult: ...

    def account(self, record: AccountingRecord) -> None:
        """Send one accounting record; may raise OSError/TimeoutError (the caller logs it)."""
        ...
