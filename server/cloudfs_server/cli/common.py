"""What every `cloudfs-server` command shares: the error type, opening the stores of a data
directory, and argument types."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

from cloudfs_server.config import ServerConfig, open_stores
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.errors import BadRequestError
from cloudfs_server.model import validate_name

StoreCommand = Callable[[argparse.Namespace, MetadataStore, BlockStore, GcLock], Awaitable[int]]


class CliError(Exception):
    """A usage problem found by the CLI itself (bad data dir, bad argument)."""


def add_block_args(p: argparse.ArgumentParser) -> None:
    """The block store options, taken by every command that opens the stores."""
    p.add_argument(
        "--blocks",
        action="append",
        default=[],
        metavar="URL",
        help="block engine: dir:///PATH, a path, or s3://BUCKET[/PREFIX]?endpoint=URL; "
        "twice = mirror (default: DIR/blocks under --data)",
    )
    p.add_argument("--compress", action="store_true", help="store blocks zstd-compressed")
    p.add_argument(
        "--encryption-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="encrypt blocks at rest (AES-256-GCM) with the 32-byte key in FILE",
    )


def store_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        data_dir=Path(args.data),
        retention_days=getattr(args, "retention_days", 30.0),
        blocks=tuple(getattr(args, "blocks", ())),
        compress=getattr(args, "compress", False),
        encryption_key_file=getattr(args, "encryption_key_file", None),
    )


def require_data(args: argparse.Namespace) -> None:
    if not (Path(args.data) / "meta.sqlite3").exists():
        raise CliError(f"no cloudfs data in {args.data} (create it with `serve` or `add-user`)")


async def with_stores(
    args: argparse.Namespace, command: StoreCommand, open_blocks: bool = True
) -> int:
    """Run `command` on opened stores; with `open_blocks` False (user commands, purge, ...) the
    block store is passed unopened, so they work whatever block options the server uses."""
    meta, blocks, lock = open_stores(store_config(args))
    await meta.open()
    try:
        if not open_blocks:
            return await command(args, meta, blocks, lock)
        await blocks.open()
        try:
            return await command(args, meta, blocks, lock)
        finally:
            await blocks.close()
    finally:
        await meta.close()


def quota_arg(text: str) -> int | None:
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("quota must be a number of bytes or 'none'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("quota must not be negative")
    return value


def user_name_arg(text: str) -> str:
    try:
        return validate_name(text, "user name")
    except BadRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
