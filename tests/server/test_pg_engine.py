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


async def test_accounts_writing_in_parallel_through_three_stores_keep_shared_rows_exact(
    pg_cluster: PgCluster,
) -> None:
    """Writes of different accounts run in parallel (no account lock between them); the block
    rows they share must still end up exact (refcounts, availability), and each account's
    change log gap-free."""
    dsn = pg_cluster.new_database("shared")
    stores = [PostgresMetadataStore(dsn, threads=4) for _ in range(3)]
    try:
        for store in stores:
            await store.open()
        users = [(await stores[0].create_user(f"u{i}", None))[0] for i in range(6)]
        block = "ab" * 32
        for user in users:
            await stores[0].record_upload(user.user_id, block, 3)

        async def create(i: int, user_index: int) -> None:
            user = users[user_index]
            await stores[i % 3].create_node(
                user.user_id,
                user.root,
                f"f{i}",
                "file",
                None,
                None,
                None,
                6,
                [(block, 3), (block, 3)],
                "dev",
            )

        await asyncio.gather(*(create(i, u) for i in range(20) for u in range(6)))
        rows = await stores[1].all_blocks()
        assert rows == [(block, 3, 6 * 20 * 2)]
        report = await stores[2].check(False, set())
        assert report.errors == []
        for user in users:
            page = await stores[0].changes(user.user_id, 0, 100)
            assert [c.seq for c in page.changes] == list(range(1, 21))
    finally:
        for store in stores:
            await store.close()


async def test_a_version_1_database_gets_atimes_and_subdirs_and_checks_clean(
    pg_cluster: PgCluster,
) -> None:
    dsn = pg_cluster.new_database("v1")
    with psycopg.connect(dsn) as conn:  # the schema and rows as a version-1 server left them
        conn.execute(postgres.MIGRATIONS[0].encode())
        conn.execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, "
            "applied_at_ns BIGINT NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
        conn.execute(
            "INSERT INTO users (user_id, name, token_sha256, root, created_at_ns) "
            "VALUES (1, 'old', 'digest', 1, 0)"
        )
        rows = [(1, None, "", 1000), (2, 1, "a", 2000), (3, 2, "b", 3000), (4, 2, "c", 4000)]
        for node_id, parent, name, mtime in rows:
            conn.execute(
                "INSERT INTO nodes (node_id, user_id, parent, name, kind, mode, size, mtime_ns, "
                "ctime_ns, version, committed_by, committed_at_ns) "
                "VALUES (%s, 1, %s, %s, 'dir', 493, 0, %s, %s, 1, 'laptop', %s)",
                (node_id, parent, name, mtime, mtime, mtime),
            )
    store = PostgresMetadataStore(dsn, threads=1)
    try:
        await store.open()
        nodes = {n: await store.get_node(1, n) for n in (1, 2, 3, 4)}
        assert {n: node.subdirs for n, node in nodes.items()} == {1: 1, 2: 2, 3: 0, 4: 0}
        assert {n: node.atime_ns for n, node in nodes.items()} == {
            1: 1000,
            2: 2000,
            3: 3000,
            4: 4000,
        }
        report = await store.check(False, set())
        assert report.errors == [], report.errors
    finally:
        await store.close()
