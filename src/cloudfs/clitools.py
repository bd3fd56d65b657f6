"""Helpers shared by the `cloudfs` subcommands that talk to the server directly (layer 5):
finding the running mount a path belongs to, the server and token to use, running one trio
call with the CLI's error translation (one line on stderr, exit 1), and drive-path lookups.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cloudfs import config, errors
from cloudfs.api import ApiClient
from cloudfs.protocol import Node


class CliError(Exception):
    """A mistake in what the user asked for; its message is the one line the CLI prints."""


def fail(message: str) -> int:
    print(f"cloudfs: error: {message}", file=sys.stderr, flush=True)
    return 1


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
    """Server URL and token: --server/--token, the mount's record, CLOUDFS_TOKEN, the login
    config. Raises: CliError naming what is missing."""
    server = args.server or (record or {}).get("server") or config.default_server()
    if not server:
        mounts = mount_records()
        if len(mounts) == 1:
            server = mounts[0]["server"]
    if not server:
        raise CliError("no server: use --server URL, `cloudfs login`, or run inside a mount")
    token = args.token or os.environ.get("CLOUDFS_TOKEN") or config.token_for(server)
    if not token:
        raise CliError(f"no token for {server}: use --token, CLOUDFS_TOKEN or `cloudfs login`")
    return str(server).rstrip("/"), token


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
