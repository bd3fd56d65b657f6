"""PostgreSQL-only parts of the engine, in-process: the advisory gc lock across two lock objects
(as two servers hold it), and the versioned schema migrations."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from cloudfs_server.engines import postgres
from cloudfs_server.engines.postgres import PgGcLock, PostgresMetadataStore

from tests.pg import PgCluster

pytestmark = pytest.mark.asyncio


async def test_gc_lock_is_shared_by_uploads_and_exclusive_for_gc_across_servers(
    pg_cluster: PgCluster,
) -> None:
    dsn = pg_cluster.new_database("lock")
    server_a, server_b = PgGcLock(dsn), PgGcLock(dsn)
    try:
        async with server_a.shared(), server_b.shared():  # shared holders coexist
            entered = asyncio.Event()

            async def gc() -> None:
                async with server_b.exclusive():
                    entered.set()
                    await asyncio.sleep(0.3)

            task = asyncio.create_task(gc())
            await asyncio.sleep(0.5)
            assert not entered.is_set(), "gc ran while uploads held the lock"
        await asyncio.wait_for(entered.wait(), 5)
        blocked = asyncio.create_task(server_a.shared().__aenter__())
        await asyncio.sleep(0.1)
        assert not blocked.done(), "an upload published while gc held the lock"
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(blocked, 5)
    finally:
        server_a.close()
        server_b.close()


async def test_schema_steps_are_applied_once_and_a_newer_schema_is_refused(
    pg_cluster: PgCluster,
) -> None:
    dsn = pg_cluster.new_database("schema")
    first = PostgresMetadataStore(dsn, threads=1)
    await first.open()
    assert await first.migrate_schema() == 0  # already current
    await first.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, postgres.SCHEMA_VERSION + 1))
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (postgres.SCHEMA_VERSION + 1,))
    newer = PostgresMetadataStore(dsn, threads=1)
    with pytest.raises(RuntimeError, match="upgrade cloudfs-server"):
        await newer.open()
    await newer.close()


async def test_servers_starting_at_once_migrate_an_empty_database_once(
    pg_cluster: PgCluster,
) -> None:
    dsn = pg_cluster.new_database("race")
    stores = [PostgresMetadataStore(dsn, threads=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    created = [await s.create_user(f"u{i}", None) for i, s in enumerate(stores)]
    assert len({info.user_id for info, _ in created}) == 4
    for s in stores:
        await s.close()
