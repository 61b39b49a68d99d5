"""The registry in PostgreSQL, shared by several gateways (psycopg 3, the `postgres` extra).

Rules kept here:
- never a hang: connect_timeout, a statement and lock timeout on the
  server side, TCP keepalives and tcp_user_timeout on ours; any of them
  firing is RegistryUnavailable with one line, and the next call connects
  again;
- writers serialise on the meta row (sql.py) under READ COMMITTED, so
  each statement after that UPDATE sees every earlier writer's commit;
  reads that must agree with each other (snapshot) run REPEATABLE READ;
- every change sends NOTIFY on CHANNEL with the new revision inside its
  transaction (delivered at commit, dropped on rollback); `wait_for_change`
  LISTENs on a connection of its own so a waiting reconciler never holds
  the one commands use;
- the password in a URL never reaches a message (`location` is redacted);
  prefer a ~/.pgpass or PGPASSFILE to a password in the URL.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from typing import Iterator

from .model import Conflict, RegistryError, RegistryUnavailable
from .sql import SqlRegistry, Tx

CHANNEL = "tunnel_registry"
CONNECT_TIMEOUT = 5  # seconds
STATEMENT_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x74756E6E  # "tunn": pg_advisory_xact_lock key while creating tables

try:
    import psycopg
except ImportError:  # the optional extra is not installed
    psycopg = None


def redact(url: str) -> str:
    """postgresql://user@host:port/db: no password, no options."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = urllib.parse.parse_qs(parts.query)
    shown = {k: v[0] for k, v in query.items() if k in ("host", "port")}
    suffix = ("?" + urllib.parse.urlencode(shown, safe="/")) if shown else ""
    return f"{parts.scheme}://{netloc}{parts.path}{suffix}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


class PostgresRegistry(SqlRegistry):
    def __init__(self, url: str):
        if psycopg is None:
            raise RegistryError("a PostgreSQL registry needs psycopg 3: pip install 'tunnel[postgres]'")
        super().__init__(redact(url))
        self._url = url
        self._conn = None
        self._listen_conn = None
        self._listen_lock = threading.Lock()
        self._migrate()

    # -- connections ------------------------------------------------------------------

    def _connect(self):
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="tunnel",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS} "
                        "-c idle_in_transaction_session_timeout=60000",
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                tcp_user_timeout=STATEMENT_TIMEOUT_MS,
            )
        except psycopg.Error as exc:
            raise RegistryUnavailable(f"registry {self.location} is unreachable: {_first_line(exc)}") from None

    def _unavailable(self, exc: BaseException) -> RegistryUnavailable:
        return RegistryUnavailable(f"registry {self.location} is unreachable: {_first_line(exc)}")

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        begin = "BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        conn, cur = self._begin(begin)
        try:
            yield Tx(cur, lambda sql: sql.replace("?", "%s"))
            cur.execute("COMMIT")
        except BaseException as exc:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, psycopg.errors.IntegrityError):
                raise Conflict(f"registry {self.location}: refused: {_first_line(exc)}") from None
            if isinstance(exc, (psycopg.OperationalError, psycopg.errors.QueryCanceled,
                                psycopg.errors.LockNotAvailable)):
                self._drop()
                raise self._unavailable(exc) from None
            if isinstance(exc, psycopg.Error):
                raise RegistryError(f"registry {self.location}: {_first_line(exc)}") from None
            raise
        finally:
            with contextlib.suppress(psycopg.Error):
                cur.close()

    def _begin(self, begin: str):
        """A connection with a transaction begun; one found dead (the server restarted) is replaced once."""
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            cur = self._conn.cursor()
            try:
                cur.execute(begin)
                return self._conn, cur
            except psycopg.OperationalError as exc:
                self._drop()
                if attempt == 2:
                    raise self._unavailable(exc) from None
            except psycopg.Error as exc:
                raise RegistryError(f"registry {self.location}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _migration_lock(self, tx: Tx) -> None:
        tx.one("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def _after_bump(self, tx: Tx, revision: int) -> None:
        tx.one("SELECT pg_notify(?, ?)", (CHANNEL, str(revision)))

    # -- the change feed ----------------------------------------------------------------

    def _listener(self):
        if self._listen_conn is None or self._listen_conn.closed:
            conn = self._connect()
            try:
                conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                raise self._unavailable(exc) from None
            self._listen_conn = conn
        return self._listen_conn

    def wait_for_change(self, since: int, timeout: float) -> int:
        with self._listen_lock:
            conn = self._listener()  # LISTEN before reading: no change can fall in between
            current = self.revision()
            if current != since or timeout <= 0:
                return current
            try:
                for _ in conn.notifies(timeout=timeout, stop_after=1):
                    pass
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                self._listen_conn = None
                raise self._unavailable(exc) from None
        return self.revision()

    def close(self) -> None:
        with self._lock:
            self._drop()
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
