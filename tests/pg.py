"""A real PostgreSQL cluster for tests: initdb + pg_ctl from the Debian packages in a temp dir.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user
(`cloudfs-test`, created if missing). It listens only on a unix socket in its own directory, on
a port number picked free. `destroy()` stops exactly this cluster (pg_ctl on its data dir) and
removes it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

TEST_USER = "cloudfs-test"


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else the newest Debian package's."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(f"{name} not found: install the postgresql package (scripts/install)")
    return candidates[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _owner() -> pwd.struct_passwd | None:
    """The unprivileged user to run the cluster as (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(TEST_USER)


class PgCluster:
    """One PostgreSQL server in a temp dir. `dsn(db)` addresses a database on it."""

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="cloudfs-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.owner = _owner()
        self._names = itertools.count(1)
        self.running = False

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.owner is not None:
            extra = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        return subprocess.run(
            args, check=True, capture_output=True, text=True, cwd=self.root, **extra, **kwargs
        )

    def init(self) -> PgCluster:
        self.sock.mkdir()
        if self.owner is not None:
            os.chmod(self.root, 0o755)
            for path in (self.root, self.sock):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            [
                pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "cloudfs",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        return self

    def start(self) -> PgCluster:
        options = [
            f"-p {self.port}",
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.sock}'",
            "-c max_connections=300",
            "-c shared_buffers=32MB",
        ]
        if not self.fsync:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(options),
                "start",
            ]
        )
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
            self.running = False

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://cloudfs@/{dbname}?host={self.sock}&port={self.port}"

    def sql(self, statement: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(statement.encode())

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its DSN."""
        name = f"{prefix}{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)
