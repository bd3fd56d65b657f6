"""Helpers shared by the `cloudfs` subcommands (layer 5): the CLI's errors and exit codes (0 ok,
1 failed, 2 malformed request), argument types, server URL checks, finding the running mount a
path belongs to, the server and token to use, running one trio call with the CLI's error
translation (one line on stderr), and drive-path lookups.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

import trio

from cloudfs import config, errors
from cloudfs.api import ApiClient
from cloudfs.durations import parse_duration
from cloudfs.protocol import Node
from cloudfs.sizes import parse_size

EXIT_OK = 0
EXIT_FAILED = 1  # the request was understood but could not be done
EXIT_USAGE = 2  # the request itself is malformed or incomplete (argparse's status too)
EXIT_CLOSED_PIPE = 141  # stdout was closed early (`| head`): 128 + SIGPIPE, as the shell reports


class CliError(Exception):
    """Something the command could not do; its message is the one line the CLI prints (exit 1)."""

    exit_code = EXIT_FAILED


class UsageError(CliError):
    """What the user asked for is malformed or incomplete (exit 2, like argparse's errors)."""

    exit_code = EXIT_USAGE


def fail(message: str | CliError, code: int | None = None) -> int:
    """Print `cloudfs: error: MESSAGE` on stderr; returns the exit status (the error's own)."""
    if code is None:
        code = message.exit_code if isinstance(message, CliError) else EXIT_FAILED
    print(f"cloudfs: error: {message}", file=sys.stderr, flush=True)
    return code


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage mistakes on one line (`cloudfs mount: error: …`, exit 2) instead
    of the usage block and the message: every error of the CLI is one line."""

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


def size_arg(text: str) -> int:
    """argparse type for sizes (`512M`, `10G`, bytes)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """argparse type for durations in seconds (`500ms`, `30s`, `5m`, a plain number)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def server_url(text: str) -> str:
    """`text` as a server URL without a trailing slash.

    Raises: UsageError naming the text and the fix when it is not an http(s) URL with a host.
    """
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise UsageError(f"{text!r} is not a server URL: bad port") from None
        return url
    if "://" not in url:
        raise UsageError(f"{text!r} is not a server URL; write http://{url}")
    raise UsageError(f"{text!r} is not a server URL; write http://HOST:PORT or https://HOST")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent to reap it counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def mount_records() -> list[dict[str, Any]]:
    """Records of running mounts (by their pid: no stat of a mountpoint, which may hang)."""
    out = []
    for path in sorted(config.runtime_dir().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and pid_alive(int(record.get("pid", 0))):
            out.append(record)
    return out


def mount_of(path: str) -> tuple[dict[str, Any], str] | None:
    """The running mount containing `path`, and the path inside the drive ('/a/b')."""
    real = os.path.realpath(path)
    best: tuple[dict[str, Any], str] | None = None
    for record in mount_records():
        mp = str(record["mountpoint"]).rstrip("/")
        if (real == mp or real.startswith(mp + "/")) and (
            best is None or len(mp) > len(best[0]["mountpoint"])
        ):
            best = (record, real[len(mp) :] or "/")
    return best


def connection(args: argparse.Namespace, record: dict[str, Any] | None) -> tuple[str, str]:
    """Server URL and token: --server, the mount's record, CLOUDFS_SERVER, the login config (the
    only running mount); --token, CLOUDFS_TOKEN, the login config.

    Raises: UsageError naming what is missing or malformed; config.ConfigError."""
    server = (
        args.server
        or (record or {}).get("server")
        or os.environ.get("CLOUDFS_SERVER")
        or config.default_server()
    )
    if not server:
        mounts = mount_records()
        if len(mounts) == 1:
            server = mounts[0]["server"]
    if not server:
        raise UsageError(
            "no server: use --server URL, CLOUDFS_SERVER, `cloudfs login`, or run inside a mount"
        )
    server = server_url(str(server))
    token = args.token or os.environ.get("CLOUDFS_TOKEN") or config.token_for(server)
    if not token:
        raise UsageError(f"no token for {server}: use --token, CLOUDFS_TOKEN or `cloudfs login`")
    return server, token


def run_api(
    server: str,
    token: str,
    work: Callable[[ApiClient], Awaitable[int]],
    device: str = "cli",
    budget_s: float = 5.0,
) -> int:
    """Run `work` with a client; the errors no command handles itself become one line."""

    async def main() -> int:
        api = ApiClient(server, token, device, retry_budget_s=budget_s)
        try:
            return await work(api)
        finally:
            await api.aclose()

    try:
        return trio.run(main)
    except errors.UnauthorizedError:
        return fail(f"{server} rejected the token (401 unauthorized)")
    except errors.TemporaryError as exc:
        return fail(f"server {server} is unreachable: {exc}")
    except errors.CloudfsError as exc:
        return fail(str(exc))


async def walk(api: ApiClient, drive_path: str, blocks: bool = False) -> Node:
    """The node at '/a/b' in the drive. Raises: NodeNotFoundError."""
    node = await api.get_node(int((await api.me())["root"]))
    for name in [part for part in drive_path.split("/") if part]:
        node = await api.lookup(node.node_id, name)
    return await api.get_node(node.node_id, blocks=True) if blocks else node
