"""What every `cloudfs-server` command shares: the error types and exit codes, the one-line
argument parser, the block store options and opening the stores of a data directory, and argument
types (sizes and durations use the client's pure cloudfs.sizes and cloudfs.durations)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from cloudfs.durations import parse_duration
from cloudfs.sizes import parse_size
from cloudfs_server.config import ServerConfig, open_stores
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.chain import parse_blocks_url
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.errors import BadRequestError, StoreConfigError
from cloudfs_server.model import validate_name

StoreCommand = Callable[[argparse.Namespace, MetadataStore, BlockStore, GcLock], Awaitable[int]]

EXIT_FAILED = 1  # understood but could not be done
EXIT_USAGE = 2  # malformed or incomplete request (argparse's status too)
EXIT_CLOSED_PIPE = 141  # stdout closed early (`| head`): 128 + SIGPIPE, as the shell reports
DAY_S = 86_400.0


class CliError(Exception):
    """Something a command could not do (bad data dir, port in use): one line, exit 1."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    """A malformed or incomplete request found by the CLI itself: one line, exit 2."""

    exit_code = EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """argparse with its mistakes on one line (`cloudfs-server gc: error: …`, exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class VersionAction(argparse.Action):
    """`--version`: prints `PROG VERSION` on stdout and exits 0. The version is looked up only
    when asked: importing importlib.metadata costs every other run tens of milliseconds."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        super().__init__(
            option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("cloudfs")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        sys.stdout.write(f"{parser.prog} {version}\n")
        parser.exit()


def add_block_args(p: argparse.ArgumentParser) -> None:
    """The block store options, taken by every command that opens the stores."""
    p.add_argument(
        "--blocks",
        action="append",
        default=[],
        type=blocks_url_arg,
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


def blocks_url_arg(text: str) -> str:
    """A `--blocks` URL, checked while parsing so a malformed one is a usage error (exit 2);
    nothing is connected or opened here."""
    try:
        parse_blocks_url(text)
    except StoreConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def add_store_args(p: argparse.ArgumentParser, data_default: str | None, data_env: str) -> None:
    """The options every command takes to find its stores: --data, --meta and the block store
    options (add_block_args)."""
    p.add_argument(
        "--data",
        required=data_default is None,
        default=data_default,
        metavar="DIR",
        help=f"data directory (default: ${data_env})",
    )
    p.add_argument(
        "--meta",
        metavar="URL",
        type=meta_url_arg,
        default=None,
        help="metadata in PostgreSQL (postgresql://…) instead of DIR's embedded database",
    )
    add_block_args(p)


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
        blocks=tuple(getattr(args, "blocks", ())),
        compress=getattr(args, "compress", False),
        encryption_key_file=getattr(args, "encryption_key_file", None),
    )


def require_data(args: argparse.Namespace) -> None:
    if getattr(args, "meta", None) is not None:
        return  # the database holds the metadata; a missing schema is created on open
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
        lock.close()
        await meta.close()


def quota_arg(text: str) -> int | None:
    """A quota: a size (`10G`, `512M`, bytes, 0) or `none`/`unlimited`."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return parse_size(text, minimum=0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'none'") from None


def duration_arg(text: str) -> float:
    """Seconds from `500ms`, `30s`, `1h`, `7d` (a plain number is seconds)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def days_arg(text: str) -> float:
    """Days from `30`, `12h`, `7d` (for the `--…-days` options: a plain number is days)."""
    try:
        return parse_duration(text, default_unit="d") / DAY_S
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_days_arg(text: str) -> float:
    """Days from a duration whose plain number is seconds (`--retention 30d`, `--older-than`)."""
    return duration_arg(text) / DAY_S


def user_name_arg(text: str) -> str:
    try:
        return validate_name(text, "user name")
    except BadRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
