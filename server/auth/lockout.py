"""Lockout: too many failed logins for a user, or from a client, lock it.

Five failures within five minutes lock that user (whatever client) and that
client (whatever user) for five minutes. A locked login is refused before
the backend is asked, so a locked account cannot be probed; a success clears
the counts. Locking clears them too: after the lock the user has five tries.

Rules kept here:
- time is an argument (`now`), so tests run on a fake clock;
- the counts live behind FailureStore (the registry's table when gateways
  share it; MemoryFailureStore here), keyed by ("user", name) or ("client", name);
- no password or code ever comes here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

MAX_FAILURES = 5
WINDOW = 300.0
LOCK_TIME = 300.0

USER = "user"
CLIENT = "client"


class FailureStore(Protocol):
    def add_failure(self, kind: str, key: str, at: float) -> None: ...

    def count_failures(self, kind: str, key: str, since: float) -> int: ...

    def clear_failures(self, kind: str, key: str) -> None: ...

    def set_lock(self, kind: str, key: str, until: float) -> None: ...

    def lock_until(self, kind: str, key: str) -> float | None: ...


class MemoryFailureStore:
    def __init__(self, keep: float = WINDOW) -> None:
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._locks: dict[tuple[str, str], float] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def add_failure(self, kind: str, key: str, at: float) -> None:
        with self._lock:
            self._failures.setdefault((kind, key), []).append(at)
            # Forget what can no longer count, so probing many names stays bounded.
            for k in [k for k, times in self._failures.items() if times[-1] <= at - self._keep]:
                del self._failures[k]
            for k in [k for k, until in self._locks.items() if until <= at]:
                del self._locks[k]

    def count_failures(self, kind: str, key: str, since: float) -> int:
        with self._lock:
            return sum(1 for t in self._failures.get((kind, key), ()) if t > since)

    def clear_failures(self, kind: str, key: str) -> None:
        with self._lock:
            self._failures.pop((kind, key), None)

    def set_lock(self, kind: str, key: str, until: float) -> None:
        with self._lock:
            self._locks[(kind, key)] = until

    def lock_until(self, kind: str, key: str) -> float | None:
        return self._locks.get((kind, key))


@dataclass(frozen=True)
class Lock:
    kind: str  # USER or CLIENT
    key: str
    until: float


class Lockout:
    def __init__(self, store: FailureStore | None = None, *, max_failures: int = MAX_FAILURES,
                 window: float = WINDOW, lock_time: float = LOCK_TIME):
        self.store = store if store is not None else MemoryFailureStore(window)
        self.max_failures = max_failures
        self.window = window
        self.lock_time = lock_time

    def locked(self, user: str, client: str, now: float) -> Lock | None:
        """The lock (the later one, if both) that refuses this login now, or None."""
        found = None
        for kind, key in ((USER, user), (CLIENT, client)):
            until = self.store.lock_until(kind, key)
            if until is not None and until > now and (found is None or until > found.until):
                found = Lock(kind, key, until)
        return found

    def failure(self, user: str, client: str, now: float) -> list[Lock]:
        """Count a failed login; the locks it starts (to log)."""
        started = []
        for kind, key in ((USER, user), (CLIENT, client)):
            self.store.add_failure(kind, key, now)
            if self.store.count_failures(kind, key, now - self.window) >= self.max_failures:
                until = now + self.lock_time
                self.store.set_lock(kind, key, until)
                self.store.clear_failures(kind, key)
                started.append(Lock(kind, key, until))
        return started

    def success(self, user: str, client: str) -> None:
        self.store.clear_failures(USER, user)
        self.store.clear_failures(CLIENT, client)
