"""A real PostgreSQL for tests: initdb in a temp folder, a Unix socket there, always stopped.

initdb refuses to run as root, so the cluster belongs to Debian's `postgres`
user (created by the `postgresql` package) and is run with runuser. It
listens on no TCP address at all: only on the socket in its own folder, named
after a port unique to this process, so parallel runs never meet.

    with PgServer.started() as pg:
        url = pg.create_database("t1")     # postgresql://postgres@/t1?host=...&port=...
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from typing import Iterator

from tests.helpers.netns import HarnessError, in_ci


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def available() -> str | None:
    """None if a test PostgreSQL can be started here, else why not."""
    if os.geteuid() != 0:
        return "starting PostgreSQL as its own user needs root"
    if _bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'tunnel[postgres]')"
    return None


def skip_or_fail() -> None:
    """Skip a PostgreSQL test where one cannot run; in CI that is a failure."""
    import pytest

    reason = available()
    if reason:
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)


class PgServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        if self.bindir is None:
            raise HarnessError("PostgreSQL is not installed")
        # Not under pytest's tmp_path: the postgres user must reach it.
        self.dir = tempfile.mkdtemp(prefix="rg-pg-")
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = 20000 + os.getpid() % 20000
        self.running = False
        self._count = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                             timeout=120, cwd=self.dir)
        if check and res.returncode != 0:
            raise HarnessError(f"{' '.join(args)}: {res.stderr or res.stdout}")
        return res

    def initdb(self) -> None:
        self._run(f"{self.bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self) -> None:
        options = (f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off")
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-o", options, "-l",
                  os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        """A fast (clean) shutdown: what an admin's `systemctl stop postgresql` does."""
        if self.running or os.path.exists(os.path.join(self.data, "postmaster.pid")):
            res = self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "20", "stop",
                            check=False)
            if res.returncode != 0:
                self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}&port={self.port}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        self._count += 1
        name = name or f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator["PgServer"]:
        server = cls()
        try:
            server.initdb()
            server.start()
            yield server
        finally:
            server.close()
