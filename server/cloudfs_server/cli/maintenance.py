"""`cloudfs-server` maintenance commands: fsck, gc, purge, usage, compact-log, scrub."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from cloudfs.durations import format_duration
from cloudfs_server import fsck, gc, scrub
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
from cloudfs_server.engines.chain import FormatGuard
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.model import Usage


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


async def _physical_bytes(meta: MetadataStore, blocks: BlockStore, stored_bytes: int) -> int:
    """Bytes the engine holds for the blocks the metadata knows (after compression and
    encryption; one copy of a mirror); the stored bytes if the engine cannot tell."""
    sizes = await blocks.stored_sizes()
    if sizes is None:
        return stored_bytes
    return sum(sizes.get(block_id, 0) for block_id, _size, _refs in await meta.all_blocks())


async def _usage(
    args: argparse.Namespace, meta: MetadataStore, blocks: BlockStore, lock: GcLock
) -> int:
    total = await meta.server_usage()
    if args.json:
        physical = await _physical_bytes(meta, blocks, total.stored_bytes)
        ratio = physical / total.stored_bytes if total.stored_bytes else 1.0

        def user(name: str, u: Usage) -> dict[str, object]:
            # Physical per user is proportional: the user's stored bytes times the server's
            # physical/stored ratio (a block shared by users is counted for each of them).
            return {"name": name, **u.to_json(), "physical_bytes": round(u.stored_bytes * ratio)}

        server = {
            "logical_bytes": total.logical_bytes,
            "referenced_bytes": total.referenced_bytes,
            "stored_bytes": total.stored_bytes,
            "physical_bytes": physical,
            "blocks": total.blocks,
            "dedup_ratio": total.dedup_ratio,
        }
        users = [user(name, u) for name, u in total.users]
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


async def _scrub(
    args: argparse.Namespace, meta: MetadataStore, blocks: BlockStore, lock: GcLock
) -> int:
    assert isinstance(blocks, FormatGuard)  # config.open_stores always builds one
    result = await scrub.scrub(meta, blocks, lock)
    for line in result.unreachable:
        print(f"ERROR: unreachable: {line}")
    for line in result.unrecoverable:
        print(f"ERROR: unrecoverable: {line}")
    print(
        f"scrub: {result.blocks} block(s), {result.copies_checked} cop(ies) read and rehashed, "
        f"{result.intact} intact everywhere, {result.repaired} cop(ies) repaired, "
        f"{len(result.unrecoverable)} unrecoverable, {len(result.unreachable)} unreachable"
    )
    return 0 if result.ok else 1


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
    p.add_argument(
        "--json", action="store_true", help="print JSON, with physical bytes (after the layers)"
    )
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
    cmd("scrub", "rehash every block on every engine; repair mirror members from intact copies")


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
    "usage": _usage,
    "scrub": _scrub,
    "compact-log": _compact_log,  # type: ignore[dict-item]
}
