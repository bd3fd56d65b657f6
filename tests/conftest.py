"""Fixtures shared by every test folder: a real cloudfs-server process and its users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PgCluster
from tests.support import ServerProcess, User


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole session (started on first use); each test takes its
    own database from it (`new_database()`). Stopped and removed at the end."""
    cluster = PgCluster()
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh `cloudfs-server serve` on 127.0.0.1 with its own data dir, stopped by PID after."""
    srv = ServerProcess(tmp_path / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def alice(server: ServerProcess) -> User:
    return server.add_user("alice")


@pytest.fixture
def bob(server: ServerProcess) -> User:
    return server.add_user("bob")
