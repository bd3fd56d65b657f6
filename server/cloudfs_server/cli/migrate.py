"""`cloudfs-server migrate`: copy an embedded deployment's metadata (DIR/meta.sqlite3 and
DIR/devices.sqlite3) into an empty PostgreSQL database, then verify the result with fsck.

Blocks stay where they are: after the copy, serve with `--data DIR --meta URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from cloudfs_server import fsck
from cloudfs_server.cli.common import CliError, store_config
from cloudfs_server.cli.serve import lock_serving
from cloudfs_server.config import open_stores
from cloudfs_server.engines.sqlite import SqliteMetadataStore

# Every table and the columns copied, in an order that needs no deferred checks. The
# identity columns (users.user_id, nodes.node_id) keep their values; their sequences are moved
# past the copied ids afterwards.
TABLES: tuple[tuple[str, str], ...] = (
    (
        "users",
        "user_id, name, password_hash, root, quota_bytes, logical_bytes, last_seq, log_floor, "
        "created_at_ns",
    ),
    ("tokens", "user_id, device, token_sha256, created_at_ns, last_used_ns"),
    (
        "nodes",
        "node_id, user_id, parent, name, kind, mode, size, mtime_ns, ctime_ns, version, "
        "committed_by, committed_at_ns, target, trashed_at_ns, original_parent, original_path, "
        "atime_ns, subdirs",
    ),
    (
        "versions",
        "node_id, version, size, mtime_ns, committed_at_ns, device, blocks, superseded_at_ns",
    ),
    ("blocks", "block_id, size, refcount, uploaded_at_ns"),
    ("availability", "user_id, block_id"),
    (
        "changes",
        "user_id, seq, op, node_id, kind, parent, name, version, device, time_ns, old_parent, "
        "old_name",
    ),
)
DEVICE_COLS = "user_id, device_id, device_name, session, joined_ns, last_seen_ns, lease_s"
IDENTITIES = (("users", "user_id"), ("nodes", "node_id"))


def _source(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("BEGIN")  # one snapshot for the whole copy
    return conn


def copy_metadata(data: Path, dsn: str) -> dict[str, int]:
    """Copy every row into the (migrated, empty) database in one transaction; rows per table."""
    from cloudfs_server.engines.postgres import connect

    counts: dict[str, int] = {}
    src = _source(data / "meta.sqlite3")
    devices = data / "devices.sqlite3"
    dev = _source(devices) if devices.exists() else None
    try:
        with connect(dsn) as dst, dst.transaction():
            if dst.execute("SELECT COUNT(*) FROM users").fetchone() != (0,):
                raise CliError("the target database already holds users; migrate needs it empty")
            sources: list[tuple[sqlite3.Connection, str, str]] = [(src, t, c) for t, c in TABLES]
            if dev is not None:
                sources.append((dev, "devices", DEVICE_COLS))
            for conn, table, cols in sources:
                n = 0
                with dst.cursor().copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in conn.execute(f"SELECT {cols} FROM {table}"):
                        copy.write_row(row)
                        n += 1
                counts[table] = n
            for table, column in IDENTITIES:
                dst.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                )
    finally:
        src.close()
        if dev is not None:
            dev.close()
    return counts


async def migrate(args: argparse.Namespace) -> int:
    data = Path(args.data)
    config = store_config(args)
    # The source first gets the embedded schema this server copies (what `serve` would do).
    source = SqliteMetadataStore(data / "meta.sqlite3")
    await source.open()
    await source.close()
    meta, blocks, lock = open_stores(config)
    await meta.open()  # creates or migrates the target's schema
    await blocks.open()
    try:
        counts = await asyncio.to_thread(copy_metadata, data, args.meta)
        for table, n in counts.items():
            print(f"migrate: copied {n} {table} row(s)")
        report = await fsck.check(meta, blocks, lock, repair=False)
    finally:
        lock.close()
        await blocks.close()
        await meta.close()
    for line in report.notes:
        print(f"note: {line}")
    for line in report.errors:
        print(f"ERROR: {line}")
    if report.errors:
        print(f"migrate: fsck of the target found {len(report.errors)} problem(s)")
        return 1
    print(f"migrate: done, fsck clean; serve with --data {data} --meta URL")
    return 0


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    cmd("migrate", "copy DIR's embedded metadata into the --meta PostgreSQL database (then fsck)")


def run(args: argparse.Namespace) -> int:
    if args.meta is None:
        raise CliError("migrate needs --meta postgresql://… (the target database)")
    data = Path(args.data)
    if not (data / "meta.sqlite3").exists():
        raise CliError(f"no cloudfs data in {data} to migrate")
    serve_lock = lock_serving(data)  # nobody may change the source while it is copied
    try:
        return asyncio.run(migrate(args))
    finally:
        os.close(serve_lock)
