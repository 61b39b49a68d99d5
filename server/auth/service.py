"""The login service: lockout, a backend, the session core and the daemon's hooks.

    service = LoginService(backend, on_actions=daemon_apply)    # defaults: memory stores, time.time
    service.login(client, user, password, code, challenge)     # from the endpoint's threads
    service.tick(counters)                                     # from the daemon, every few seconds
    service.kick(target) / service.logout(client) / service.sessions()

`on_actions(actions)` receives every sessions.Grant / Revoke / Account, in
order, after the state changed: the daemon moves the client's addresses
between login-only and its groups on Grant/Revoke (one nft map element) and
may record Account actions. Accounting records also go to the backend
(RADIUS) from one background thread, so a slow accounting server delays no
login and no tick.

Rules kept here:
- the backend runs in a small pool of worker threads and is waited for at
  most `auth_timeout` seconds: an endpoint thread never hangs on it, and when
  the pool is saturated a login is refused at once as unavailable;
- a locked user or client is refused before the backend is asked, and only
  one login per user and per client is checked at a time;
- a challenge's state stays here, behind a random token that is bound to the
  client and the user, expires in two minutes and is used once;
- every login, failure, lockout, expiry, logout and kick is logged with user,
  client and reason; never a password or a code.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from tunnel import loginapi

from .backend import (Accepted, AccountingRecord, AuthRequest, Backend, Challenged, ClientInfo, Rejected,
                      Unavailable)
from .lockout import Lockout
from .sessions import Account, Action, Grant, Revoke, Session, SessionManager

log = logging.getLogger("tunnel.auth")

AUTH_TIMEOUT = 10.0
AUTH_WORKERS = 4
MAX_QUEUED = 16  # logins waiting for a worker before we refuse at once
CHALLENGE_TTL = 120.0
MAX_CHALLENGES = 1024
MAX_USER = 253  # RFC 2865 User-Name length
MAX_SECRET = 1024


def _safe(text: str) -> str:
    """A user-supplied name fit for one log line."""
    return repr(text[:MAX_USER])


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    session: Session | None = None
    error: str | None = None  # a loginapi error value
    message: str = ""
    challenge: str | None = None  # token to send back with the code
    retry_after: int | None = None  # seconds, when locked


class _Challenge:
    __slots__ = ("state", "user", "client", "expires")

    def __init__(self, state: bytes, user: str, client: str, expires: float):
        self.state, self.user, self.client, self.expires = state, user, client, expires


class AccountingSender:
    """Sends accounting records to the backend from one thread, in order."""

    def __init__(self, send: Callable[[AccountingRecord], None], maxsize: int = 10000):
        self._send = send
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="auth-accounting", daemon=True)
        self._thread.start()

    def submit(self, record: AccountingRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            log.warning("accounting queue full: dropped %s for session %s", record.kind, record.session_id)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self._send(record)
            except Exception as exc:  # the accounting server's trouble must not end this thread
                log.warning("accounting %s for user %s session %s not sent: %s", record.kind,
                            _safe(record.user), record.session_id, exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued was sent or failed (tests; shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)


class LoginService:
    def __init__(self, backend: Backend, *, sessions: SessionManager | None = None, lockout: Lockout | None = None,
                 on_actions: Callable[[list[Action]], None] | None = None,
                 counters_of: Callable[[str], tuple[int, int] | None] | None = None,
                 clock: Callable[[], float] = time.time, auth_timeout: float = AUTH_TIMEOUT,
                 workers: int = AUTH_WORKERS, send_accounting: bool = True):
        self.backend = backend
        self.sessions = sessions or SessionManager()
        self.lockout = lockout or Lockout()
        self.on_actions = on_actions
        self.counters_of = counters_of
        self.clock = clock
        self.auth_timeout = auth_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auth")
        self._inflight = threading.BoundedSemaphore(workers + MAX_QUEUED)
        self._lock = threading.RLock()
        self._challenges: dict[str, _Challenge] = {}
        self._busy: set[tuple[str, str]] = set()
        self._accounting = AccountingSender(backend.account) if send_accounting else None

    @property
    def code_hint(self) -> str:
        return loginapi.CODE_WITH_PASSWORD if self.backend.code_with_password else loginapi.CODE_ON_CHALLENGE

    # -- login -------------------------------------------------------------

    def login(self, client: ClientInfo, user: str, password: str, code: str | None = None,
              challenge: str | None = None) -> LoginResult:
        user = (user or "").strip()
        if not user or len(user) > MAX_USER or not user.isprintable():
            return LoginResult(False, error=loginapi.BAD_REQUEST, message="give a user name")
        if len(password or "") > MAX_SECRET or len(code or "") > MAX_SECRET:
            return LoginResult(False, error=loginapi.BAD_REQUEST, message="too long")
        now = self.clock()
        lock = self.lockout.locked(user, client.name, now)
        if lock is not None:
            wait = max(1, int(lock.until - now + 0.999))
            log.warning("login refused: user %s client %s address %s: locked (%s %s) for %d s more",
                        _safe(user), client.name, client.address, lock.kind, _safe(lock.key), wait)
            return LoginResult(False, error=loginapi.LOCKED, retry_after=wait,
                               message=f"too many failed logins: try again in {_minutes(wait)}")
        state = None
        if challenge:
            state = self._take_challenge(challenge, user, client.name, now)
            if state is None:
                log.warning("login failed: user %s client %s address %s: unknown or expired challenge",
                            _safe(user), client.name, client.address)
                return LoginResult(False, error=loginapi.BAD_CREDENTIALS,
                                   message="the one-time code prompt expired: log in again")
            if not code:
                return LoginResult(False, error=loginapi.BAD_REQUEST, message="give the one-time code")
        request = AuthRequest(user=user, password=password or "", client=client, code=code or None, state=state)
        # One login at a time per user and per client: parallel guesses would all
        # pass the lock check before the first failure is counted.
        keys = (("user", user), ("client", client.name))
        with self._lock:
            if any(k in self._busy for k in keys):
                return LoginResult(False, error=loginapi.BUSY,
                                   message="another login for this user or device is in progress")
            self._busy.update(keys)
        try:
            result = self._run_backend(request, now)
        finally:
            with self._lock:
                self._busy.difference_update(keys)
        now = self.clock()
        if isinstance(result, Accepted):
            return self._accepted(result, client, now)
        if isinstance(result, Challenged):
            token = self._new_challenge(result.state, user, client.name, now)
            log.info("login challenged: user %s client %s address %s: one-time code asked",
                     _safe(user), client.name, client.address)
            return LoginResult(False, error=loginapi.CODE_REQUIRED, message=result.message, challenge=token)
        if isinstance(result, Unavailable):
            log.error("login failed: user %s client %s address %s: %s", _safe(user), client.name, client.address,
                      result.reason)
            return LoginResult(False, error=loginapi.UNAVAILABLE,
                               message="the authentication server is not answering: try again later")
        reason = result.reason if isinstance(result, Rejected) else "rejected"
        log.warning("login failed: user %s client %s address %s: %s", _safe(user), client.name, client.address,
                    reason)
        for lock in self.lockout.failure(user, client.name, now):
            log.warning("locked: %s %s for %d s after %d failed logins (last: user %s client %s)", lock.kind,
                        _safe(lock.key), int(lock.until - now), self.lockout.max_failures, _safe(user), client.name)
        return LoginResult(False, error=loginapi.BAD_CREDENTIALS, message="wrong user name, password or code")

    def _run_backend(self, request: AuthRequest, now: float):
        if not self._inflight.acquire(blocking=False):
            return Unavailable("too many logins waiting for the authentication backend")
        try:
            future = self._pool.submit(self.backend.authenticate, request, now)
        except RuntimeError:  # pool shut down
            self._inflight.release()
            return Unavailable("the login service is stopping")
        future.add_done_callback(lambda _f: self._inflight.release())
        try:
            return future.result(timeout=self.auth_timeout)
        except concurrent.futures.TimeoutError:
            return Unavailable(f"the {self.backend.name} backend did not decide within {self.auth_timeout:g} s")
        except Exception as exc:  # a backend bug must not become a traceback on the endpoint
            log.exception("login backend %s failed", self.backend.name)
            return Unavailable(f"the {self.backend.name} backend failed: {type(exc).__name__}")

    def _accepted(self, result: Accepted, client: ClientInfo, now: float) -> LoginResult:
        self.lockout.success(result.user, client.name)
        counters = self.counters_of(client.name) if self.counters_of else None
        with self._lock:
            session, actions = self.sessions.login(result, client, now, backend=self.backend.name,
                                                   counters=counters)
            self._dispatch(actions)
        return LoginResult(True, session=session)

    # -- challenges --------------------------------------------------------

    def _new_challenge(self, state: bytes, user: str, client: str, now: float) -> str:
        token = os.urandom(18).hex()
        with self._lock:
            for key in [k for k, c in self._challenges.items() if c.expires <= now]:
                del self._challenges[key]
            if len(self._challenges) >= MAX_CHALLENGES:
                self._challenges.pop(next(iter(self._challenges)))
            self._challenges[token] = _Challenge(state, user, client, now + CHALLENGE_TTL)
        return token

    def _take_challenge(self, token: str, user: str, client: str, now: float) -> bytes | None:
        with self._lock:
            c = self._challenges.pop(token, None)
        if c is None or c.user != user or c.client != client or now >= c.expires:
            return None
        return c.state or b"\0"  # a backend that gave no state still gets a second round

    # -- sessions ----------------------------------------------------------

    def session_of(self, client: ClientInfo) -> Session | None:
        with self._lock:
            return self.sessions.get(client.name)

    def logout(self, client: ClientInfo) -> bool:
        counters = self.counters_of(client.name) if self.counters_of else None
        with self._lock:
            actions = self.sessions.logout(client.name, self.clock(), counters)
            self._dispatch(actions)
        return bool(actions)

    def kick(self, target: str) -> list[Session]:
        with self._lock:
            actions = self.sessions.kick(target, self.clock())
            self._dispatch(actions)
        return [a.session for a in actions if isinstance(a, Revoke)]

    def remove_client(self, client: str) -> None:
        with self._lock:
            self._dispatch(self.sessions.remove_client(client, self.clock()))

    def tick(self, counters: Mapping[str, tuple[int, int]] | None = None) -> list[Action]:
        with self._lock:
            actions = self.sessions.tick(self.clock(), counters)
            self._dispatch(actions)
        return actions

    def resume(self) -> list[Action]:
        with self._lock:
            actions = self.sessions.resume(self.clock())
            self._dispatch(actions)
        return actions

    def sessions_list(self) -> list[Session]:
        with self._lock:
            return self.sessions.sessions()

    def close(self, end_sessions: bool = False) -> None:
        """Stop the workers; with `end_sessions`, end every session first (Stop records sent)."""
        if end_sessions:
            with self._lock:
                self._dispatch(self.sessions.stop_all(self.clock()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._accounting is not None:
            self._accounting.flush(10)
            self._accounting.close()

    def flush_accounting(self, timeout: float = 30.0) -> bool:
        return self._accounting.flush(timeout) if self._accounting else True

    def _dispatch(self, actions: Iterable[Action]) -> None:
        actions = list(actions)
        for a in actions:
            if isinstance(a, Grant):
                s = a.session
                log.info("login: user %s client %s address %s groups %s until %s (idle %d s) via %s",
                         _safe(s.user), s.client.name, s.client.address, ",".join(s.groups) or "-",
                         time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.expires)), s.idle_timeout,
                         s.backend or "?")
            elif isinstance(a, Revoke):
                s = a.session
                what = {"admin-reset": "kicked", "user-request": "logged out", "idle-timeout": "idle",
                        "session-timeout": "expired"}.get(a.cause, a.cause)
                log.info("session ended: user %s client %s address %s: %s (%s), %d s, %d bytes in, %d out",
                         _safe(s.user), s.client.name, s.client.address, what, a.cause, int(self.clock() - s.started),
                         s.input_octets, s.output_octets)
            elif isinstance(a, Account) and self._accounting is not None:
                self._accounting.submit(a.record)
        if self.on_actions is not None and actions:
            self.on_actions(actions)


def _minutes(seconds: int) -> str:
    return f"{seconds} s" if seconds < 90 else f"{(seconds + 59) // 60} min"
