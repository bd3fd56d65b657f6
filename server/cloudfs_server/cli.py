"""`cloudfs-server` command line: serve, users, fsck, gc, purge, usage, compact-log.

The CLI is a translation boundary: a `ServerError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from cloudfs_server import fsck, gc
from cloudfs_server.blockstore import BlockStore
from cloudfs_server.config import DAY_NS, ServerConfig, open_stores
from cloudfs_server.errors import BadRequestError, ServerError
from cloudfs_server.gclock import GcLock
from cloudfs_server.meta import MetadataStore
from cloudfs_server.model import validate_name

log = logging.getLogger("cloudfs_server")

StoreCommand = Callable[[argparse.Namespace, MetadataStore, BlockStore, GcLock], Awaitable[int]]


class CliError(Exception):
    """A usage problem found by the CLI itself (bad data dir, bad argument)."""


def _config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        data_dir=Path(args.data),
        retention_days=getattr(args, "retention_days", 30.0),
    )


def _require_data(args: argparse.Namespace) -> None:
    if not (Path(args.data) / "meta.sqlite3").exists():
        raise CliError(f"no cloudfs data in {args.data} (create it with `serve` or `add-user`)")


async def _with_stores(args: argparse.Namespace, command: StoreCommand) -> int:
    meta, blocks, lock = open_stores(_config(args))
    await meta.open()
    await blocks.open()
    try:
        return await command(args, meta, blocks, lock)
    finally:
        await blocks.close()
        await meta.close()


# ---- serve -------------------------------------------------------------------------------
def _lock_serving(data: Path) -> int:
    """One server per data directory: long-poll wake-ups are in-process (released at exit)."""
    fd = os.open(data / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CliError(f"another cloudfs-server is already serving {data}") from None
    return fd


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web  # only `serve` needs the web stack (keeps other commands quick)

    from cloudfs_server.app import create_app

    config = ServerConfig(
        data_dir=Path(args.data),
        retention_days=args.retention_days,
        purge_interval_s=args.purge_interval,
        max_long_polls=args.max_long_polls,
    )
    app = create_app(config)
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access"))
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=30.0)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"cloudfs-server listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests")
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


# ---- users -------------------------------------------------------------------------------
async def _add_user(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    user, token = await meta.create_user(args.name, args.quota)
    quota = "no quota" if user.quota_bytes is None else f"quota {user.quota_bytes} bytes"
    print(f"created user {user.name!r} (id {user.user_id}, root node {user.root}, {quota}).")
    print("API token (shown only now; only its hash is stored):")
    print(token, flush=True)
    return 0


async def _list_users(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    print(f"{'id':>4}  {'name':<24} {'root':>6}  quota_bytes")
    for user in await meta.list_users():
        quota = "-" if user.quota_bytes is None else str(user.quota_bytes)
        print(f"{user.user_id:>4}  {user.name:<24} {user.root:>6}  {quota}")
    return 0


async def _reset_token(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    token = await meta.reset_token(args.name)
    print(f"new token for {args.name!r} (the old one no longer works):")
    print(token, flush=True)
    return 0


async def _set_quota(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    await meta.set_quota(args.name, args.quota)
    print(f"quota of {args.name!r}: {'none' if args.quota is None else args.quota}")
    return 0


# ---- maintenance -------------------------------------------------------------------------
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
        f"{args.retention_days:g} day(s); run `gc` to reclaim their blocks"
    )
    return 0


async def _usage(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    total = await meta.server_usage()
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
        raise CliError("give --keep N and/or --older-than-days D")
    older = None if args.older_than_days is None else int(args.older_than_days * DAY_NS)
    dropped = await meta.compact_log(args.keep, older)
    print(f"compact-log: dropped {dropped} change row(s)")
    return 0


# ---- argument parsing --------------------------------------------------------------------
def _quota(text: str) -> int | None:
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("quota must be a number of bytes or 'none'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("quota must not be negative")
    return value


def _user_name(text: str) -> str:
    try:
        return validate_name(text, "user name")
    except BadRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudfs-server", description="cloudfs block and metadata daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data", required=True, metavar="DIR", help="data directory")
        return p

    p = cmd("serve", "run the HTTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        help="keep old versions and trash this long (hourly purge)",
    )
    p.add_argument("--purge-interval", type=float, default=3600.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-long-polls",
        type=int,
        default=10_000,
        help="held change-feed requests; beyond, idle clients are told to retry later",
    )
    p = cmd("add-user", "create a user and print its API token (last line)")
    p.add_argument("name", type=_user_name)
    p.add_argument("--quota", type=_quota, default=None, metavar="BYTES")
    cmd("list-users", "list users")
    p = cmd("reset-token", "replace a user's token and print the new one")
    p.add_argument("name")
    p = cmd("set-quota", "set or clear (none) a user's quota")
    p.add_argument("name")
    p.add_argument("--quota", type=_quota, required=True, metavar="BYTES|none")
    p = cmd("fsck", "verify blocks and metadata; non-zero exit on problems")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    p = cmd("gc", "delete blocks no version references")
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=3600.0,
        help="keep unreferenced blocks uploaded more recently (default 3600)",
    )
    p = cmd("purge", "drop old versions and trash past the retention")
    p.add_argument("--retention-days", type=float, default=30.0)
    cmd("usage", "usage per user and for the whole server")
    p = cmd("compact-log", "drop old change-log rows (clients behind get 410 and rescan)")
    p.add_argument("--keep", type=int, default=None, help="keep the last N changes per user")
    p.add_argument("--older-than-days", type=float, default=None)
    return parser


STORE_COMMANDS: dict[str, StoreCommand] = {
    "add-user": _add_user,  # type: ignore[dict-item]
    "list-users": _list_users,  # type: ignore[dict-item]
    "reset-token": _reset_token,  # type: ignore[dict-item]
    "set-quota": _set_quota,  # type: ignore[dict-item]
    "fsck": _fsck,
    "gc": _gc,
    "purge": _purge,  # type: ignore[dict-item]
    "usage": _usage,  # type: ignore[dict-item]
    "compact-log": _compact_log,  # type: ignore[dict-item]
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            Path(args.data).mkdir(parents=True, exist_ok=True)
            serve_lock = _lock_serving(Path(args.data))
            try:
                code = asyncio.run(_serve(args))
            finally:
                os.close(serve_lock)
        else:
            if args.command != "add-user":
                _require_data(args)
            Path(args.data).mkdir(parents=True, exist_ok=True)
            code = asyncio.run(_with_stores(args, STORE_COMMANDS[args.command]))
    except (ServerError, CliError) as exc:
        message = exc.message if isinstance(exc, ServerError) else str(exc)
        print(f"cloudfs-server {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)
