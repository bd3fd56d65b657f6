"""The CLI's history and trash commands (layer 5): `versions`, `restore`, `trash`, `undelete`.

They call the history and trash routes of docs/protocol.md through `ApiClient`. Server, token and
mounts are found like `cloudfs devices`/`holders` (cloudfs.registry); a path inside a running mount
names its node by `st_ino`, which is the server node id (cloudfs.inodes).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import socket
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.clitools import CliError, UsageError, connection, fail, mount_of, run_api, walk
from cloudfs.inodes import ROOT_INODE
from cloudfs.protocol import Node
from cloudfs.sizes import format_size

# Retry budget of one CLI call: long enough for a server restart, short enough for a person.
CALL_BUDGET_S = 5.0


def add_parsers(sub: Any) -> None:
    """Add `versions`, `restore`, `trash` and `undelete` to cli.py's subparsers."""

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            help="server URL (default: the mount's, CLOUDFS_SERVER, or `cloudfs login`)",
        )
        p.add_argument("--token", help="API token (or CLOUDFS_TOKEN, or `cloudfs login`)")
        p.add_argument("--json", action="store_true", help="print JSON")

    path_help = "a file in a mount (or, with --server, a path in the drive such as /docs/a.txt)"
    v = sub.add_parser("versions", help="list a file's versions, newest first")
    v.add_argument("path", help=path_help)
    connection(v)
    r = sub.add_parser("restore", help="make an old version of a file the current one")
    r.add_argument("path", help=path_help)
    r.add_argument("--version", type=int, required=True, metavar="N", help="the version to restore")
    connection(r)
    t = sub.add_parser("trash", help="list deleted files (id, original path, size, when)")
    connection(t)
    u = sub.add_parser("undelete", help="restore a deleted file from the trash")
    u.add_argument("node", type=int, metavar="ID", help="the file's id from `cloudfs trash`")
    u.add_argument(
        "--to",
        metavar="PATH",
        help="where to put it (a path in a mount or in the drive; an existing folder keeps the "
        "name); default: where it was",
    )
    connection(u)


def _device(record: dict[str, Any] | None) -> str:
    """The name recorded as `device` for a restore: the mount's (or this host's) plus ' (cli)'."""
    return f"{(record or {}).get('device') or socket.gethostname()} (cli)"


def _when(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_ns / 1e9))


def _table(rows: Sequence[tuple[str, ...]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    )


# ---- which file ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A file named on the command line: by its inode in a mount, or by its path in the drive."""

    shown: str  # what the user typed, for messages
    record: dict[str, Any] | None  # the running mount containing it
    ino: int | None  # st_ino (inside a mount)
    drive_path: str | None  # '/a/b' (with --server)


def _same_server(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a.rstrip("/") == b.rstrip("/")


def _target(args: argparse.Namespace) -> Target:
    """Raises: CliError (one line) when the path cannot name a file."""
    found = mount_of(args.path)
    if found is not None and _same_server(args.server, found[0].get("server")):
        try:
            st = os.stat(args.path)
        except FileNotFoundError:
            raise CliError(f"{args.path}: no such file") from None
        except OSError as exc:
            raise CliError(f"{args.path}: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            raise CliError(f"{args.path} is a directory; only files have versions")
        return Target(args.path, found[0], st.st_ino, None)
    if not args.server:
        raise UsageError(
            f"{args.path} is not inside a running cloudfs mount "
            "(or give --server and a drive path such as /docs/a.txt)"
        )
    if not args.path.startswith("/"):
        raise UsageError(f"{args.path}: a drive path starts with / (such as /docs/a.txt)")
    return Target(args.path, None, None, posixpath.normpath(args.path))


async def _file_node(api: ApiClient, target: Target) -> Node:
    """The target's node on the server. Raises: CliError (gone, a directory)."""
    try:
        if target.ino is not None:
            # The mount swaps the root's node id and node id 1 (cloudfs.inodes); inode 1 is the
            # root directory, which _target already refused.
            root_id = int((await api.me())["root"])
            node = await api.get_node(ROOT_INODE if target.ino == root_id else target.ino)
        else:
            assert target.drive_path is not None
            node = await walk(api, target.drive_path)
    except errors.NodeNotFoundError:
        raise CliError(f"{target.shown}: no such file on the server (not yet committed?)") from None
    if node.kind == "dir":
        raise CliError(f"{target.shown} is a directory; only files have versions")
    return node


# ---- versions ------------------------------------------------------------------------------------
def render_versions(versions: list[dict[str, Any]], current: int) -> str:
    rows = [("VERSION", "SIZE", "TIME", "DEVICE")]
    for v in versions:
        mark = " (current)" if int(v["version"]) == current else ""
        rows.append(
            (
                str(v["version"]),
                format_size(int(v["size"])),
                _when(int(v["committed_at_ns"])),
                f"{v['device']}{mark}",
            )
        )
    return _table(rows, right={0, 1})


def cmd_versions(args: argparse.Namespace) -> int:
    """`cloudfs versions PATH`: the file's versions, newest first."""
    try:
        target = _target(args)
        server, token = connection(args, target.record)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        try:
            node = await _file_node(api, target)
            versions = await api.list_versions(node.node_id)
        except CliError as exc:
            return fail(exc)
        except errors.NodeNotFoundError:
            return fail(f"{target.shown}: no such file on the server (deleted meanwhile?)")
        versions.sort(key=lambda v: int(v["version"]), reverse=True)
        if args.json:
            print(json.dumps({"id": node.node_id, "versions": versions}, indent=2))
        else:
            print(render_versions(versions, node.version))
        return 0

    return run_api(server, token, work, device=_device(target.record), budget_s=CALL_BUDGET_S)


# ---- restore -------------------------------------------------------------------------------------
def cmd_restore(args: argparse.Namespace) -> int:
    """`cloudfs restore PATH --version N`: version N's content becomes a new current version."""
    if args.version < 1:
        return fail(UsageError(f"--version must be a positive version number, not {args.version}"))
    try:
        target = _target(args)
        server, token = connection(args, target.record)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        try:
            node = await _file_node(api, target)
        except CliError as exc:
            return fail(exc)
        if node.version == args.version:
            print(f"{target.shown}: version {node.version} is already the current version")
            return 0
        try:
            restored = await api.restore_version(node.node_id, args.version)
        except errors.NodeNotFoundError:
            try:
                known = [int(v["version"]) for v in await api.list_versions(node.node_id)]
            except errors.NodeNotFoundError:
                return fail(f"{target.shown}: no such file on the server (deleted meanwhile?)")
            if args.version in known:
                raise
            return fail(
                f"{target.shown} has no version {args.version} "
                f"(it has {', '.join(map(str, sorted(known, reverse=True)))})"
            )
        if args.json:
            print(json.dumps(restored.to_json(), indent=2))
        else:
            print(
                f"{target.shown}: restored version {args.version} as the new version "
                f"{restored.version} ({format_size(restored.size)})"
            )
        return 0

    return run_api(server, token, work, device=_device(target.record), budget_s=CALL_BUDGET_S)


# ---- trash ---------------------------------------------------------------------------------------
def render_trash(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "the trash is empty"
    rows = [("ID", "ORIGINAL PATH", "SIZE", "TRASHED")]
    for e in entries:
        rows.append(
            (
                str(e["id"]),
                str(e.get("original_path") or e.get("name") or "?"),
                format_size(int(e.get("size", 0))),
                _when(int(e["trashed_at_ns"])),
            )
        )
    return _table(rows, right={0, 2})


def cmd_trash(args: argparse.Namespace) -> int:
    """`cloudfs trash`: deleted files, most recently deleted first."""
    try:
        server, token = connection(args, None)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        entries = await api.list_trash()
        entries.sort(key=lambda e: (int(e["trashed_at_ns"]), int(e["id"])), reverse=True)
        print(json.dumps(entries, indent=2) if args.json else render_trash(entries))
        return 0

    return run_api(server, token, work, device=_device(None), budget_s=CALL_BUDGET_S)


# ---- undelete ------------------------------------------------------------------------------------
def _destination(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    """The mount record and drive path named by --to (None: the original place)."""
    if args.to is None:
        return None, None
    found = mount_of(args.to)
    if found is not None and _same_server(args.server, found[0].get("server")):
        return found
    if not args.to.startswith("/"):
        raise UsageError(
            f"--to {args.to}: give a path inside a running mount "
            "or a drive path such as /docs/a.txt"
        )
    return None, posixpath.normpath(args.to)


async def _place(api: ApiClient, drive_path: str, name: str, shown: str) -> tuple[int, str, str]:
    """(parent id, name, path to show) for --to: an existing folder keeps `name`, anything else
    names the new file. Raises: CliError."""
    try:
        node = await walk(api, drive_path)
    except errors.NodeNotFoundError:
        node = None
    if node is not None:
        if node.kind != "dir":
            raise CliError(f"--to {shown} already exists; choose another name")
        return node.node_id, name, os.path.join(shown, name)
    parent_path, new_name = posixpath.split(drive_path)
    try:
        parent = await walk(api, parent_path)
    except errors.NodeNotFoundError:
        raise CliError(f"--to {shown}: its folder does not exist") from None
    if parent.kind != "dir":
        raise CliError(f"--to {shown}: {parent_path} is not a folder")
    return parent.node_id, new_name, shown


def cmd_undelete(args: argparse.Namespace) -> int:
    """`cloudfs undelete ID [--to PATH]`: bring a trashed file back."""
    try:
        record, to_path = _destination(args)
        server, token = connection(args, record)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        entry = next((e for e in await api.list_trash() if int(e["id"]) == args.node), None)
        if entry is None:
            return fail(f"no file with id {args.node} in the trash (`cloudfs trash` lists them)")
        original = str(entry.get("original_path") or entry["name"])
        try:
            if to_path is None:
                await api.restore_trash(args.node)
                where = original
            else:
                parent_id, name, where = await _place(api, to_path, str(entry["name"]), args.to)
                await api.restore_trash(args.node, parent_id, name)
        except CliError as exc:
            return fail(exc)
        except errors.NameExistsError:
            if to_path is None:
                return fail(
                    f"{original} exists again; restore it elsewhere with "
                    f"`cloudfs undelete {args.node} --to PATH`"
                )
            return fail(f"--to {args.to} already exists; choose another name")
        except errors.NodeNotFoundError:
            if to_path is None:
                return fail(
                    f"the folder of {original} no longer exists; restore it elsewhere with "
                    f"`cloudfs undelete {args.node} --to PATH`"
                )
            return fail(f"--to {args.to}: the folder or the trashed file is gone (try again)")
        if args.json:
            print(json.dumps({"id": args.node, "path": where}))
        else:
            print(f"restored {original} (id {args.node}) to {where}")
        return 0

    return run_api(server, token, work, device=_device(record), budget_s=CALL_BUDGET_S)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "versions": cmd_versions,
    "restore": cmd_restore,
    "trash": cmd_trash,
    "undelete": cmd_undelete,
}


def main(argv: list[str] | None = None) -> int:
    """Run the history commands alone (`python -m cloudfs.history versions …`)."""
    parser = argparse.ArgumentParser(prog="cloudfs")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
