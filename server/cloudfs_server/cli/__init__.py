"""`cloudfs-server` command line: serve (cli/serve.py), users (cli/users.py), fsck, gc, purge,
usage, compact-log (cli/maintenance.py), migrate (cli/migrate.py).

The CLI is a translation boundary: a `ServerError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from cloudfs_server.cli import maintenance, migrate, serve, users
from cloudfs_server.cli.common import (
    CliError,
    StoreCommand,
    add_store_args,
    require_data,
    with_stores,
)
from cloudfs_server.errors import ServerError

STORE_COMMANDS: dict[str, StoreCommand] = {**users.COMMANDS, **maintenance.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudfs-server", description="cloudfs block and metadata daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_store_args(p)
        return p

    serve.add_parser(cmd)
    migrate.add_parser(cmd)
    users.add_parsers(cmd)
    maintenance.add_parsers(cmd)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            code = serve.run(args)
        elif args.command == "migrate":
            code = migrate.run(args)
        else:
            if args.command != "add-user":
                require_data(args)
            Path(args.data).mkdir(parents=True, exist_ok=True)
            code = asyncio.run(with_stores(args, STORE_COMMANDS[args.command]))
    except (ServerError, CliError) as exc:
        message = exc.message if isinstance(exc, ServerError) else str(exc)
        print(f"cloudfs-server {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)
