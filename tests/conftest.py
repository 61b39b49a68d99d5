"""Shared fixtures. The shared helpers themselves live in tests/helpers/.

Tests marked `netns` need root: a developer without it gets a skip, but in CI
(CI=true) the same condition is a failure, so a misconfigured runner cannot
pass by skipping everything.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import pytest

from tests.helpers import netns, tunnelproc
from tests.helpers.netns import Topology, require_root, topology

# The harness's names before it moved to tests/helpers/, for tests written
# against them: the same module objects, not copies.
sys.modules.setdefault("tests.netns", netns)
sys.modules.setdefault("tests.integration.tunnelproc", tunnelproc)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        require_root()


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], Topology]]:
    """`netns_factory(prefix)` -> a Topology torn down when the test ends (pass or fail).

    Namespaces are named f"{prefix}{pid % 100000}-{name}": give your own prefix
    (e.g. "nc"); the pid keeps xdist workers and concurrent sessions apart.
    """
    require_root()
    with contextlib.ExitStack() as stack:

        def make(prefix: str) -> Topology:
            return stack.enter_context(topology(prefix))

        yield make


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL per test process (tests/pgserver.py), stopped at the end."""
    from tests.pgserver import PgServer, skip_or_fail

    skip_or_fail()
    with PgServer.started() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def registry_location(request, tmp_path) -> str:
    """Where a fresh, empty registry lives: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    return request.getfixturevalue("pg_server").create_database()
