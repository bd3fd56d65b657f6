"""`cloudfs-server` maintenance commands: fsck, gc, purge, usage, compact-log."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from cloudfs.durations import format_duration
from cloudfs_server import fsck, gc
from cloudfs_server.cli.common import (
    DAY_S,
    StoreCommand,
    UsageError,
    days_arg,
    duration_arg,
    duration_days_arg,
)
from cloudfs_server.config import DAY_NS
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore


async def _fsck(
    args: argparse.Namespace, meta: MetadataStore, blocks: BlockStore, lock: GcLock
) -> int:
    report = await fsck.check(meta, blocks, lock, args.repair)
    for line in report.repaired:
        print(f"repaired: {line}")
    for line in report.notes:
        print(f"note: {line}")
    for line in report.errors:
        print(f"ERROR: {line}")
    if report.errors:
        print(
            f"fsck: {len(report.errors)} problem(s) found"
            + ("" if args.repair else "; `fsck --repair` fixes what is safe")
        )
        return 1
    print("fsck: clean" + (f" after {len(report.repaired)} repair(s)" if report.repaired else ""))
    return 0


async def _gc(
    args: argparse.Namespace, meta: MetadataStore, blocks: BlockStore, lock: GcLock
) -> int:
    result = await gc.collect(meta, blocks, lock, args.grace_seconds)
    print(
        f"gc: removed {result.blocks} unreferenced block(s) ({result.bytes} bytes), "
        f"{result.orphans} orphan file(s), {result.temp_files} stale temp file(s)"
    )
    return 0


async def _purge(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    versions, trashed = await meta.purge(int(args.retention_days * DAY_NS))
    print(
        f"purge: dropped {versions} old version(s) and {trashed} trashed node(s) older than "
        f"{format_duration(args.retention_days * DAY_S)}; run `gc` to reclaim their blocks"
    )
    return 0


async def _usage(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    total = await meta.server_usage()
    if args.json:
        server = {
            "logical_bytes": total.logical_bytes,
            "referenced_bytes": total.referenced_bytes,
            "stored_bytes": total.stored_bytes,
            "blocks": total.blocks,
            "dedup_ratio": total.dedup_ratio,
        }
        users = [{"name": name, **u.to_json()} for name, u in total.users]
        print(json.dumps({"users": users, "server": server}, indent=2))
        return 0
    print(
        f"{'user':<20} {'files':>8} {'dirs':>6} {'logical_bytes':>15} {'stored_bytes':>15} "
        f"{'dedup':>7} {'quota_bytes':>12}"
    )
    for name, u in total.users:
        quota = "-" if u.quota_bytes is None else str(u.quota_bytes)
        print(
            f"{name:<20} {u.files:>8} {u.directories:>6} {u.logical_bytes:>15} "
            f"{u.stored_bytes:>15} {u.dedup_ratio:>7.2f} {quota:>12}"
        )
    print(
        f"server: {total.logical_bytes} live logical bytes; {total.referenced_bytes} bytes "
        f"referenced by all versions (incl. history and trash); {total.stored_bytes} bytes "
        f"stored in {total.blocks} blocks; dedup ratio {total.dedup_ratio:.2f}"
    )
    return 0


async def _compact_log(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    if args.keep is None and args.older_than_days is None:
        raise UsageError("give --keep N and/or --older-than DURATION (e.g. 30d)")
    older = None if args.older_than_days is None else int(args.older_than_days * DAY_NS)
    dropped = await meta.compact_log(args.keep, older)
    print(f"compact-log: dropped {dropped} change row(s)")
    return 0


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = cmd("fsck", "verify blocks and metadata; non-zero exit on problems")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    p = cmd("gc", "delete blocks no version references")
    p.add_argument(
        "--grace",
        "--grace-seconds",
        dest="grace_seconds",
        type=duration_arg,
        default=3600.0,
        metavar="DURATION",
        help="keep unreferenced blocks uploaded more recently, e.g. 30m or 3600 (default 1h)",
    )
    p = cmd("purge", "drop old versions and trash past the retention")
    add_retention(p, "drop versions and trash older than this")
    p = cmd("usage", "usage per user and for the whole server")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("compact-log", "drop old change-log rows (clients behind get 410 and rescan)")
    p.add_argument("--keep", type=int, default=None, help="keep the last N changes per user")
    p.add_argument(
        "--older-than",
        dest="older_than_days",
        type=duration_days_arg,
        default=None,
        metavar="DURATION",
        help="drop changes older than this, e.g. 30d (a plain number is seconds)",
    )
    p.add_argument(
        "--older-than-days",
        dest="older_than_days",
        type=days_arg,
        metavar="DAYS",
        help="the same in days (a plain number is days)",
    )


def add_retention(p: argparse.ArgumentParser, what: str) -> None:
    """`--retention 30d` (a plain number is seconds) and `--retention-days 30` (days)."""
    p.add_argument(
        "--retention",
        dest="retention_days",
        type=duration_days_arg,
        default=30.0,
        metavar="DURATION",
        help=f"{what}, e.g. 30d or 12h (default 30d)",
    )
    p.add_argument(
        "--retention-days",
        dest="retention_days",
        type=days_arg,
        default=30.0,
        metavar="DAYS",
        help="the same in days (a plain number is days)",
    )


COMMANDS: dict[str, StoreCommand] = {
    "fsck": _fsck,
    "gc": _gc,
    "purge": _purge,  # type: ignore[dict-item]
    "usage": _usage,  # type: ignore[dict-item]
    "compact-log": _compact_log,  # type: ignore[dict-item]
}
