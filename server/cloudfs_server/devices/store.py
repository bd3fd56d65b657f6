"""The persistent device list: one `DeviceStore` interface, an embedded SQLite engine (the
PostgreSQL one is devices/store_postgres.py).

Only the list of joined devices is persistent (id, name, session, times, lease); which blocks a
device holds lives in server memory and is re-sent by the device after a restart. A `shared`
store is changed by several servers at once: the registry then re-reads an account's devices
before using them (devices/registry.py).
"""

from __future__ import annotations

import abc
import asyncio
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cloudfs_server.engines.sqlite import is_sqlite_full
from cloudfs_server.errors import ServerError, ServerFullError

T = TypeVar("T")


class DeviceStoreError(ServerError):
    """The device store failed (disk full, I/O error, locked too long). A retry may help."""

    code, status = "device_store_error", 500


@dataclass
class DeviceRecord:
    """One joined device of one account, as persisted."""

    user_id: int
    device_id: int  # per account: 1, 2, 3 … smallest free first (cloudfs.peers semantics)
    device_name: str
    # Random per join: tells a device's calls from those of an earlier holder of its id.
    session: str
    joined_ns: int
    last_seen_ns: int
    lease_s: int


class DeviceStore(abc.ABC):
    """Where the device list survives a restart.

    Contract for every engine: every method is a coroutine that never blocks the event loop, and
    every write is one transaction. `(user_id, device_id)` is unique.
    """

    # True when other servers change the same rows (PostgreSQL): the registry then treats the
    # store, not its memory, as the truth for the device list, sessions and leases.
    shared = False

    async def load_user(self, user_id: int) -> list[DeviceRecord]:
        """One account's persisted devices, by device_id (shared stores)."""
        return [r for r in await self.load() if r.user_id == user_id]

    async def claim(self, record: DeviceRecord) -> bool:
        """Insert the row unless `(user_id, device_id)` is taken; whether it was (shared stores:
        two servers may hand out the same free id at once, and only one may keep it)."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    async def expire(self, user_id: int, device_id: int, session: str, seen_before_ns: int) -> bool:
        """Delete the row if it has `session` and was last seen before the time (shared stores:
        a heartbeat through another server keeps it); whether it was deleted."""
        raise NotImplementedError(f"{type(self).__name__} is not a shared store")

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the schema if needed. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; no call may follow."""

    @abc.abstractmethod
    async def load(self) -> list[DeviceRecord]:
        """Every persisted device, ordered by (user_id, device_id)."""

    @abc.abstractmethod
    async def insert(self, record: DeviceRecord) -> None:
        """Add a joined device, replacing a stale row with the same (user_id, device_id)."""

    @abc.abstractmethod
    async def touch(self, user_id: int, device_id: int, session: str, last_seen_ns: int) -> None:
        """Record a heartbeat time (no-op unless that device row has that session)."""

    @abc.abstractmethod
    async def delete(self, user_id: int, device_id: int, session: str) -> None:
        """Forget a device that left or expired (no-op unless the row has that session, so a
        late delete never removes the row of a newer device with the same id)."""


# Schema of the `devices` table (one row per joined device):
#   user_id       the account (users.id of the metadata store)
#   device_id     the device's id inside the account, reused after it leaves or expires
#   device_name   the name the device gave on join (X-Cloudfs-Device style, ≤ 255 bytes)
#   session       random token of this join; calls naming another session are refused
#   joined_ns     wall-clock join time, ns since the epoch
#   last_seen_ns  wall-clock time of the last call from the device
#   lease_s       seconds without a call after which the device is removed
_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    user_id      INTEGER NOT NULL,
    device_id    INTEGER NOT NULL,
    device_name  TEXT    NOT NULL,
    session      TEXT    NOT NULL,
    joined_ns    INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    lease_s      INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID
"""


class SqliteDeviceStore(DeviceStore):
    """SQLite engine: its own small database file (WAL) in the server's data directory.

    One connection, used from worker threads one call at a time (a lock serialises them).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                assert self._conn is not None, "DeviceStore used before open() or after close()"
                try:
                    with self._conn:  # one transaction: commit, or roll back on an exception
                        return fn(self._conn)
                except sqlite3.Error as exc:
                    if is_sqlite_full(exc):
                        message = f"device store {self.path.name} is out of space"
                        raise ServerFullError(message) from exc
                    raise DeviceStoreError(f"device store {self.path}: {exc}") from exc

        return await asyncio.to_thread(call)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.isolation_level = "DEFERRED"  # back to implicit transactions for `with conn`
            with conn:
                conn.execute(_SCHEMA)
            return conn

        self._conn = await asyncio.to_thread(connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                conn.close()

    async def load(self) -> list[DeviceRecord]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT user_id, device_id, device_name, session, joined_ns, last_seen_ns,"
                " lease_s FROM devices ORDER BY user_id, device_id"
            ).fetchall()
        )
        return [DeviceRecord(*row) for row in rows]

    async def insert(self, record: DeviceRecord) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.user_id,
                    record.device_id,
                    record.device_name,
                    record.session,
                    record.joined_ns,
                    record.last_seen_ns,
                    record.lease_s,
                ),
            )
        )

    async def touch(self, user_id: int, device_id: int, session: str, last_seen_ns: int) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE devices SET last_seen_ns = ?"
                " WHERE user_id = ? AND device_id = ? AND session = ?",
                (last_seen_ns, user_id, device_id, session),
            )
        )

    async def delete(self, user_id: int, device_id: int, session: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM devices WHERE user_id = ? AND device_id = ? AND session = ?",
                (user_id, device_id, session),
            )
        )
