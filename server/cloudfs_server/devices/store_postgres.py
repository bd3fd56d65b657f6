"""The device list in PostgreSQL (`devices` table, created by the metadata schema migrations of
engines/postgres.py), so every server sharing the database sees the same devices and sessions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from cloudfs_server.devices.store import DeviceRecord, DeviceStore
from cloudfs_server.engines.postgres import connect, dsn_hint
from cloudfs_server.errors import StoreUnavailableError

T = TypeVar("T")


class PgDeviceStore(DeviceStore):
    """One connection, used from worker threads one call at a time; reconnects after a failure."""

    shared = True

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.hint = dsn_hint(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._open = False

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        def call() -> T:
            with self._lock:
                assert self._open, "DeviceStore used before open() or after close()"
                for attempt in range(2):
                    try:
                        if self._conn is None or self._conn.closed or self._conn.broken:
                            self._conn = connect(self.dsn)
                        with self._conn.transaction():
                            return fn(self._conn)
                    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                        # Each call is one idempotent statement: retrying it once on a fresh
                        # connection (e.g. after a database restart) is safe.
                        if self._conn is not None and (self._conn.closed or self._conn.broken):
                            self._conn.close()
                            self._conn = None
                        if attempt:
                            raise StoreUnavailableError(
                                f"the device store {self.hint} is unavailable: {exc}"
                            ) from exc
                raise AssertionError("unreachable")

        return await asyncio.to_thread(call)

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
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
                "INSERT INTO devices VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (user_id, device_id) DO UPDATE SET"
                " device_name = excluded.device_name, session = excluded.session,"
                " joined_ns = excluded.joined_ns, last_seen_ns = excluded.last_seen_ns,"
                " lease_s = excluded.lease_s",
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
        if "\x00" in session:  # matches no row (sessions are URL-safe), and text cannot hold it
            return
        await self._run(
            lambda c: c.execute(
                "UPDATE devices SET last_seen_ns = %s"
                " WHERE user_id = %s AND device_id = %s AND session = %s",
                (last_seen_ns, user_id, device_id, session),
            )
        )

    async def delete(self, user_id: int, device_id: int, session: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM devices WHERE user_id = %s AND device_id = %s AND session = %s",
                (user_id, device_id, session),
            )
        )

    async def load_user(self, user_id: int) -> list[DeviceRecord]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT user_id, device_id, device_name, session, joined_ns, last_seen_ns,"
                " lease_s FROM devices WHERE user_id = %s ORDER BY device_id",
                (user_id,),
            ).fetchall()
        )
        return [DeviceRecord(*row) for row in rows]

    async def claim(self, record: DeviceRecord) -> bool:
        cur = await self._run(
            lambda c: c.execute(
                "INSERT INTO devices VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (user_id, device_id) DO NOTHING",
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
        return cur.rowcount == 1

    async def expire(self, user_id: int, device_id: int, session: str, seen_before_ns: int) -> bool:
        cur = await self._run(
            lambda c: c.execute(
                "DELETE FROM devices WHERE user_id = %s AND device_id = %s AND session = %s"
                " AND last_seen_ns < %s",
                (user_id, device_id, session, seen_before_ns),
            )
        )
        return cur.rowcount == 1
