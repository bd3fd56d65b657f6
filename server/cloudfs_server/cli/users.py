"""`cloudfs-server` user commands: add-user, list-users, reset-token, set-quota, set-password,
tokens, revoke-token."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cloudfs_server.cli.common import CliError, StoreCommand, UsageError, quota_arg, user_name_arg
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.model import ADMIN_DEVICE
from cloudfs_server.passwords import PASSWORD_MAX_CHARS, hash_password

# set-quota's "not given" (None means "no quota").
_UNSET = object()


def read_password(path: Path | None, required: bool) -> str | None:
    """The password from `path` (its first line), else from a getpass prompt when stdin is a
    terminal (where an empty answer means no password unless `required`); None when neither
    (and not `required`). Raises: CliError, UsageError."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the password file {path}: {exc}") from exc
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: " if required else "password (empty: none): ")
        if not password and not required:
            return None
        if getpass.getpass("password (again): ") != password:
            raise CliError("the two passwords differ")
    elif required:
        raise UsageError("give --password-file FILE (stdin is not a terminal to prompt on)")
    else:
        return None
    if not password:
        raise CliError("the password is empty")
    if len(password) > PASSWORD_MAX_CHARS:
        raise CliError(f"the password is longer than {PASSWORD_MAX_CHARS} characters")
    return password


async def hashed(password: str | None) -> str | None:
    return None if password is None else await asyncio.to_thread(hash_password, password)


async def _add_user(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    password_hash = await hashed(read_password(args.password_file, required=False))
    user, token = await meta.create_user(args.name, args.quota, password_hash)
    quota = "no quota" if user.quota_bytes is None else f"quota {user.quota_bytes} bytes"
    login = "password set" if password_hash else "no password"
    print(
        f"created user {user.name!r} (id {user.user_id}, root node {user.root}, {quota}, {login})."
    )
    print(f"API token of device {ADMIN_DEVICE!r} (shown only now; only its hash is stored):")
    print(token, flush=True)
    return 0


async def _list_users(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    users = await meta.list_users()
    if args.json:
        rows = [
            {"id": u.user_id, "name": u.name, "root": u.root, "quota_bytes": u.quota_bytes}
            for u in users
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':>4}  {'name':<24} {'root':>6}  quota_bytes")
    for user in users:
        quota = "-" if user.quota_bytes is None else str(user.quota_bytes)
        print(f"{user.user_id:>4}  {user.name:<24} {user.root:>6}  {quota}")
    return 0


async def _reset_token(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    token = await meta.reset_token(args.name)
    print(
        f"new {ADMIN_DEVICE!r} token for {args.name!r} (the old one no longer works; "
        "other devices keep theirs):"
    )
    print(token, flush=True)
    return 0


async def _set_password(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    if await meta.password_hash(args.name) is None:  # before asking for a password
        raise CliError(f"no user named {args.name!r}")
    password_hash = await hashed(read_password(args.password_file, required=True))
    await meta.set_password_hash(args.name, password_hash)
    print(f"password of {args.name!r} set (existing device tokens keep working)")
    return 0


def _when(ns: int | None) -> str:
    if ns is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


async def _tokens(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    tokens = await meta.list_tokens(args.name)
    if args.json:
        rows = [
            {
                "device": t.device,
                "created_at_ns": t.created_at_ns,
                "last_used_ns": t.last_used_ns,
            }
            for t in tokens
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'device':<32} {'created':<19}  last used (updated at most once a minute)")
    for t in tokens:
        print(f"{t.device:<32} {_when(t.created_at_ns):<19}  {_when(t.last_used_ns)}")
    return 0


async def _revoke_token(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    await meta.revoke_token(args.name, args.device)
    print(f"revoked the token of {args.name!r} on device {args.device!r}")
    return 0


def quota_of(args: argparse.Namespace) -> int | None:
    """set-quota's quota, given as `set-quota bob 10G` or `set-quota bob --quota 10G`.
    Raises: UsageError when it is missing or given twice differently."""
    given = [q for q in (args.quota_pos, args.quota) if q is not _UNSET]
    if not given:
        raise UsageError("give the quota: `set-quota NAME 10G` (or `none` to clear it)")
    if len(given) == 2 and given[0] != given[1]:
        raise UsageError("the quota is given twice with different values")
    quota = given[0]
    assert quota is None or isinstance(quota, int)
    return quota


async def _set_quota(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    quota = quota_of(args)
    await meta.set_quota(args.name, quota)
    print(f"quota of {args.name!r}: {'none' if quota is None else quota}")
    return 0


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = cmd("add-user", "create a user and print its API token (last line)")
    p.add_argument("name", type=user_name_arg)
    p.add_argument(
        "--quota", type=quota_arg, default=None, metavar="SIZE", help="e.g. 10G, 512M or bytes"
    )
    p.add_argument(
        "--password-file", type=Path, default=None, metavar="FILE",
        help="the password for `cloudfs login` (first line of FILE; default: a prompt when "
        "stdin is a terminal, else no password)",
    )  # fmt: skip
    p = cmd("set-password", "set a user's password (for `cloudfs login`)")
    p.add_argument("name")
    p.add_argument(
        "--password-file", type=Path, default=None, metavar="FILE",
        help="first line of FILE (default: a prompt; stdin must be a terminal)",
    )  # fmt: skip
    p = cmd("tokens", "list a user's device tokens (device, created, last used)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("revoke-token", "revoke one device's token: its next request answers 401")
    p.add_argument("name")
    p.add_argument("device")
    p = cmd("list-users", "list users")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cmd("reset-token", "replace a user's token and print the new one")
    p.add_argument("name")
    p = cmd("set-quota", "set or clear (none) a user's quota: set-quota NAME 10G")
    p.add_argument("name")
    p.add_argument(
        "quota_pos", nargs="?", type=quota_arg, default=_UNSET, metavar="SIZE|none",
        help="e.g. 10G, 512M, bytes, or none",
    )  # fmt: skip
    p.add_argument("--quota", type=quota_arg, default=_UNSET, metavar="SIZE|none")


COMMANDS: dict[str, StoreCommand] = {
    "add-user": _add_user,  # type: ignore[dict-item]
    "list-users": _list_users,  # type: ignore[dict-item]
    "reset-token": _reset_token,  # type: ignore[dict-item]
    "set-quota": _set_quota,  # type: ignore[dict-item]
    "set-password": _set_password,  # type: ignore[dict-item]
    "tokens": _tokens,  # type: ignore[dict-item]
    "revoke-token": _revoke_token,  # type: ignore[dict-item]
}
