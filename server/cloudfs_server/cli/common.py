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


def add_store_args(p: argparse.ArgumentParser) -> None:
    """The options every command takes to find its stores."""
    p.add_argument("--data", required=True, metavar="DIR", help="data directory")
    p.add_argument(
        "--meta",
        metavar="URL",
        type=meta_url_arg,
        default=None,
        help="metadata in PostgreSQL (postgresql://…) instead of DIR's embedded database",
    )


def meta_url_arg(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("--meta must be a postgresql:// URL")
    import psycopg  # only commands given --meta load the driver

    try:
        psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        raise argparse.ArgumentTypeError(f"--meta is not a valid URL: {exc}") from None
    return text


def store_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        data_dir=Path(args.data),
        retention_days=getattr(args, "retention_days", 30.0),
        meta_url=getattr(args, "meta", None),
    )


def require_data(args: argparse.Namespace) -> None:
    if getattr(args, "meta", None) is not None:
        return  # the database holds the metadata; a missing schema is created on open
    if not (Path(args.data) / "meta.sqlite3").exists():
        raise CliError(f"no cloudfs data in {args.data} (create it with `serve` or `add-user`)")


async def with_stores(args: argparse.Namespace, command: StoreCommand) -> int:
    meta, blocks, lock = open_stores(store_config(args))
    await meta.open()
    await blocks.open()
    try:
        return await command(args, meta, blocks, lock)
    finally:
        lock.close()
        await blocks.close()
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
