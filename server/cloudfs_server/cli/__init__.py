"""`cloudfs-server` command line: serve (cli/serve.py), users (cli/users.py), fsck, gc, purge,
usage, compact-log, scrub (cli/maintenance.py), migrate (cli/migrate.py).

The CLI is a translation boundary: every error becomes one line on stderr; exit status 0 ok,
1 failed, 2 malformed request, 141 stdout closed early (cli/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from pathlib import Path

from cloudfs_server.cli import maintenance, migrate, serve, users
from cloudfs_server.cli.common import (
    EXIT_CLOSED_PIPE,
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    OneLineParser,
    StoreCommand,
    VersionAction,
    add_store_args,
    require_data,
    with_stores,
)
from cloudfs_server.errors import BadRequestError, ServerError

STORE_COMMANDS: dict[str, StoreCommand] = {**users.COMMANDS, **maintenance.COMMANDS}
# Commands that never touch blocks: they do not open (or need options for) the block store.
METADATA_ONLY = {*users.COMMANDS, "purge", "compact-log"}
# The data directory when --data is not given.
DATA_ENV = "CLOUDFS_DATA"
# Set to 1 to get the traceback of an unexpected error besides its one line.
DEBUG_ENV = "CLOUDFS_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cloudfs-server", description="cloudfs block and metadata daemon")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    data_default = os.environ.get(DATA_ENV) or None

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_store_args(p, data_default, DATA_ENV)
        return p

    serve.add_parser(cmd)
    migrate.add_parser(cmd)
    users.add_parsers(cmd)
    maintenance.add_parsers(cmd)
    return parser


def run(args: argparse.Namespace) -> int:
    level = args.log_level.upper() if args.command == "serve" else "WARNING"
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if Path(args.data).exists() and not Path(args.data).is_dir():
        raise CliError(f"--data {args.data} is not a directory")
    if args.command == "serve":
        return serve.run(args)
    if args.command == "migrate":
        return migrate.run(args)
    if args.command != "add-user":
        require_data(args)
    Path(args.data).mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        with_stores(args, STORE_COMMANDS[args.command], args.command not in METADATA_ONLY)
    )


def quiet_closed_pipe() -> int:
    """stdout was closed by its reader (`| head`): stop quietly. Python flushes stdout once
    more at exit, so point it at /dev/null first or that flush prints a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def main(argv: list[str] | None = None) -> None:
    """The one translation boundary of the CLI: each error becomes one line and a status."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete  # only then (~30 ms of imports every other run would pay)

        argcomplete.autocomplete(parser)
    command = "cloudfs-server"
    try:
        args = parser.parse_args(argv)
        command = f"cloudfs-server {args.command}"
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, while we can still catch it
    except BrokenPipeError:
        code = quiet_closed_pipe()
    except CliError as exc:
        code = _fail(command, str(exc), exc.exit_code)
    except ServerError as exc:
        code = _fail(
            command, exc.message, EXIT_USAGE if isinstance(exc, BadRequestError) else EXIT_FAILED
        )
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:
        _traceback_if_asked()
        where = f"{exc.filename}: " if exc.filename else ""
        code = _fail(command, f"{where}{exc.strerror or exc}", EXIT_FAILED)
    except Exception as exc:  # the last translation: a bug still gets one line, not a traceback
        _traceback_if_asked()
        message = (
            f"unexpected {exc.__class__.__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)"
        )
        code = _fail(command, message, EXIT_FAILED)
    raise SystemExit(code)


def _traceback_if_asked() -> None:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()


def _fail(command: str, message: str, code: int) -> int:
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)
    return code
