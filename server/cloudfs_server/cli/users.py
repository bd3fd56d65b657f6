"""`cloudfs-server` user commands: add-user, list-users, reset-token, set-quota."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cloudfs_server.cli.common import StoreCommand, quota_arg, user_name_arg
from cloudfs_server.engines.meta import MetadataStore


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


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = cmd("add-user", "create a user and print its API token (last line)")
    p.add_argument("name", type=user_name_arg)
    p.add_argument("--quota", type=quota_arg, default=None, metavar="BYTES")
    cmd("list-users", "list users")
    p = cmd("reset-token", "replace a user's token and print the new one")
    p.add_argument("name")
    p = cmd("set-quota", "set or clear (none) a user's quota")
    p.add_argument("name")
    p.add_argument("--quota", type=quota_arg, required=True, metavar="BYTES|none")


COMMANDS: dict[str, StoreCommand] = {
    "add-user": _add_user,  # type: ignore[dict-item]
    "list-users": _list_users,  # type: ignore[dict-item]
    "reset-token": _reset_token,  # type: ignore[dict-item]
    "set-quota": _set_quota,  # type: ignore[dict-item]
}
