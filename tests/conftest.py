"""Fixtures shared by every test folder: a real cloudfs-server process and its users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, User


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
