"""The registry in one SQLite file beside the server's config (the default).

Rules kept here:
- the file and its -wal/-shm companions are private (0600, created under
  umask 077); an existing file readable by others is refused, as key files are;
- WAL, so readers (the daemon's reconciler) never block a writer; writers
  take the database lock at BEGIN IMMEDIATE and wait for it at most
  BUSY_TIMEOUT before RegistryUnavailable;
- a change on any connection, in any process, is seen by `wait_for_change`
  through a cheap poll of the revision row (SQLite has no notifications).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from typing import Iterator

from tunnel.secrets import InsecureFileError, check_private_file

from .model import Conflict, RegistryError, RegistryUnavailable
from .sql import SqlRegistry, Tx

BUSY_TIMEOUT = 10.0  # seconds a writer waits for another's transaction
POLL_INTERVAL = 0.1  # seconds between revision reads while waiting for a change


class SqliteRegistry(SqlRegistry):
    def __init__(self, path: str, *, create: bool = True):
        super().__init__(os.path.abspath(path))
        self.path = self.location
        self._closed = threading.Event()
        if not os.path.exists(self.path):
            if not create:
                raise RegistryError(f"no registry at {self.path}")
            directory = os.path.dirname(self.path)
            if not os.path.isdir(directory):
                raise RegistryError(f"{directory} does not exist")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
        try:
            check_private_file(self.path)
        except InsecureFileError as exc:
            raise RegistryError(str(exc)) from None
        old = os.umask(0o077)
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA synchronous=FULL")  # a committed client survives a power cut
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
            raise RegistryError(f"{self.path}: {exc}") from None
        finally:
            os.umask(old)

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise RegistryUnavailable(f"registry {self.path} is busy: {exc}") from None
        try:
            yield Tx(cur, str)
            cur.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise Conflict(f"registry {self.path}: refused: {exc}") from None
            if isinstance(exc, sqlite3.OperationalError):
                raise RegistryUnavailable(f"registry {self.path}: {exc}") from None
            raise
        finally:
            cur.close()

    def wait_for_change(self, since: int, timeout: float) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current = self.revision()
            left = deadline - time.monotonic()
            if current != since or left <= 0 or self._closed.is_set():
                return current
            self._closed.wait(min(POLL_INTERVAL, left))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._conn.close()
