"""`cloudfs-server` user commands: add-user, list-users, reset-token, set-quota."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from cloudfs_server.cli.common import StoreCommand, UsageError, quota_arg, user_name_arg
from cloudfs_server.engines.meta import MetadataStore

# set-quota's "not given" (None means "no quota").
_UNSET = object()


async def _add_user(args: argparse.Namespace, meta: MetadataStore, *_: object) -> int:
    user, token = await meta.create_user(args.name, args.quota)
    quota = "no quota" if user.quota_bytes is None else f"quota {user.quota_bytes} bytes"
    print(f"created user {user.name!r} (id {user.user_id}, root node {user.root}, {quota}).")
    print("API token (shown only now; only its hash is stored):")
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
    print(f"new token for {args.name!r} (the old one no longer works):")
    print(token, flush=True)
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
}
