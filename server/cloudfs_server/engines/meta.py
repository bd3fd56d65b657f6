"""The metadata interface the routes, CLI, fsck and gc call; engines implement it.

Contract for every engine:
- Every method is a coroutine and never blocks the event loop (both engines run each call in a
  worker thread: SQLite's, and PostgreSQL's on a psycopg connection per thread).
- Every write is one transaction: it happens completely or not at all.
- A node id of another user, or a trashed node outside the trash routes, raises `NotFoundError`
  exactly like a missing one.
- Methods that change the namespace append to the user's change log in the same transaction;
  the caller wakes long-polls afterwards (`ChangeNotifier.notify`).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

from cloudfs_server.model import (
    BatchOp,
    BatchResult,
    BlockList,
    ChangePage,
    FsckReport,
    Node,
    ServerUsage,
    TokenInfo,
    Usage,
    UserInfo,
    VersionInfo,
)


class MetadataStore(abc.ABC):
    # ---- lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection. No call may follow."""

    async def watch_changes(self, wake: Callable[[int], Awaitable[None]]) -> None:  # noqa: B027
        """Call `wake(user_id)` for changes committed by *other* processes, until cancelled.

        The embedded engine has one serving process, which wakes its own long-polls: nothing to
        watch, returns at once. A shared engine (PostgreSQL) runs for as long as the server does.
        """

    # ---- users ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_user(
        self, name: str, quota_bytes: int | None, password_hash: str | None = None
    ) -> tuple[UserInfo, str]:
        """Create a user with an empty root and an optional password hash (passwords.py);
        return it and the token of its `admin-cli` device (shown once).

        Raises: ExistsError if the name is taken.
        """

    @abc.abstractmethod
    async def list_users(self) -> list[UserInfo]: ...

    @abc.abstractmethod
    async def reset_token(self, name: str) -> str:
        """Replace the user's `admin-cli` device token (creating it if it was revoked); the old
        one stops working, the other devices' tokens do not change. Raises: NotFoundError."""

    @abc.abstractmethod
    async def issue_token(self, user_id: int, device: str) -> str:
        """A new token for the user's `device`, replacing that device's previous token."""

    @abc.abstractmethod
    async def list_tokens(self, name: str) -> list[TokenInfo]:
        """The user's device tokens, by device name. Raises: NotFoundError."""

    @abc.abstractmethod
    async def revoke_token(self, name: str, device: str) -> None:
        """Delete one device's token; the next request with it answers 401.
        Raises: NotFoundError (no such user or no token for that device)."""

    @abc.abstractmethod
    async def set_password_hash(self, name: str, password_hash: str | None) -> None:
        """Set (None: clear) the user's password hash. Raises: NotFoundError."""

    @abc.abstractmethod
    async def password_hash(self, name: str) -> tuple[UserInfo, str | None] | None:
        """The user and its password hash (None: no password), or None if there is no user."""

    @abc.abstractmethod
    async def set_quota(self, name: str, quota_bytes: int | None) -> None: ...

    @abc.abstractmethod
    async def authenticate(self, token: str) -> UserInfo | None:
        """The user owning `token`, or None. Records the token's last use at most once a
        minute (a write then, none on the other requests)."""

    @abc.abstractmethod
    async def usage(self, user_id: int) -> Usage: ...

    @abc.abstractmethod
    async def server_usage(self) -> ServerUsage: ...

    # ---- blocks --------------------------------------------------------------------------
    @abc.abstractmethod
    async def record_upload(self, user_id: int, block_id: str, size: int) -> bool:
        """Upsert the block row (refreshing its upload time) and make it available to the user.

        Must be called while holding the shared gc lock, after the block file is durable.
        Returns True if the block was not available to this user before. Whether another user
        stored the same bytes is never revealed (that would confirm someone holds that content).
        """

    @abc.abstractmethod
    async def missing_blocks(self, user_id: int, block_ids: list[str]) -> list[str]:
        """The ids of `block_ids` not available to the user, in request order."""

    @abc.abstractmethod
    async def available_block_size(self, user_id: int, block_id: str) -> int | None:
        """The block's size if it is available to the user, else None."""

    # ---- namespace -----------------------------------------------------------------------
    @abc.abstractmethod
    async def get_node(self, user_id: int, node_id: int, with_blocks: bool = False) -> Node: ...

    @abc.abstractmethod
    async def list_children(
        self, user_id: int, node_id: int, after: str | None, limit: int
    ) -> tuple[list[Node], str | None]:
        """Live children sorted by UTF-8 name bytes after `after`; and the next `after`."""

    @abc.abstractmethod
    async def lookup(self, user_id: int, parent: int, name: str) -> Node: ...

    @abc.abstractmethod
    async def create_node(
        self,
        user_id: int,
        parent: int,
        name: str,
        kind: str,
        mode: int | None,
        mtime_ns: int | None,
        target: str | None,
        size: int,
        blocks: BlockList,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        """Create a dir, symlink, or file (version 1 with `blocks`).

        `mtime_ns` defaults to now, `atime_ns` to the mtime. The parent directory's mtime and
        ctime become the change's time; a new directory adds 1 to the parent's `subdirs`.

        Raises: NotFoundError, NotDirError, ExistsError (with `node`), MissingBlocksError,
        QuotaExceededError.
        """

    @abc.abstractmethod
    async def commit(
        self,
        user_id: int,
        node_id: int,
        base_version: int,
        size: int,
        blocks: BlockList,
        mtime_ns: int | None,
        device: str,
    ) -> Node:
        """New content version `base_version + 1`; the previous one becomes history.

        Raises: NotFoundError, IsDirError, MissingBlocksError, VersionConflictError,
        QuotaExceededError.
        """

    @abc.abstractmethod
    async def setattr(
        self,
        user_id: int,
        node_id: int,
        mode: int | None,
        mtime_ns: int | None,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        """Set the given attributes (None: keep); ctime becomes now. Raises: NotFoundError."""

    @abc.abstractmethod
    async def move(
        self, user_id: int, node_id: int, parent: int, name: str, replace: bool, device: str
    ) -> tuple[Node, int | None]:
        """Rename/move, optionally replacing the target; returns the node and the replaced id.

        Both parents' mtime and ctime become the change's time; `subdirs` follows (a directory
        leaves the old parent, joins the new one, a replaced empty directory leaves it).
        """

    @abc.abstractmethod
    async def delete(self, user_id: int, node_id: int, device: str) -> bool:
        """Trash a file/symlink (True) or remove an empty directory (False).

        The parent's mtime and ctime become the change's time (and `subdirs` drops for a dir).
        """

    @abc.abstractmethod
    async def apply_batch(self, user_id: int, ops: list[BatchOp], device: str) -> list[BatchResult]:
        """Apply `ops` in order; one result per op, same order (POST /v1/batch).

        Contract (every engine):
        - Each op does exactly what the single method does (`create_node`, `commit`, `setattr`,
          `move`, `delete`): same checks in the same order, same rows, same change-log rows, same
          `ServerError` (returned in `BatchResult.error`, never raised).
        - Each op is atomic on its own: a failing op changes nothing (a savepoint rolled back)
          and later ops still run, seeing the effects of every earlier op that succeeded.
        - The whole batch is one transaction: it commits once (one fsync), and the call returns
          only after that commit; the caller then wakes long-polls once. If the transaction
          itself fails (I/O, a bug), the call raises and nothing of the batch is applied.
        - A `NodeRef` that is a str is the `label` of an earlier `CreateOp` of this batch and
          means the node it made. The caller guarantees every label is defined once, before
          use. If that create failed, the op fails with `DependencyFailedError(label=...)`.
        - Every op's node ids are checked like the single methods (another user's → not_found).
        """

    # ---- history and trash ---------------------------------------------------------------
    @abc.abstractmethod
    async def list_versions(self, user_id: int, node_id: int) -> list[VersionInfo]: ...

    @abc.abstractmethod
    async def get_version(self, user_id: int, node_id: int, version: int) -> VersionInfo: ...

    @abc.abstractmethod
    async def restore_version(
        self, user_id: int, node_id: int, version: int, device: str
    ) -> Node: ...

    @abc.abstractmethod
    async def list_trash(self, user_id: int) -> list[Node]: ...

    @abc.abstractmethod
    async def restore_trash(
        self, user_id: int, node_id: int, parent: int | None, name: str | None, device: str
    ) -> Node: ...

    @abc.abstractmethod
    async def purge(self, retention_ns: int) -> tuple[int, int]:
        """Drop history superseded and trash deleted more than `retention_ns` ago.

        Returns (versions dropped, trashed nodes dropped).
        """

    # ---- change log ----------------------------------------------------------------------
    @abc.abstractmethod
    async def changes(self, user_id: int, cursor: int | None, limit: int) -> ChangePage:
        """Changes with seq > cursor (None: 'latest', no changes).

        Raises: CursorExpiredError if the log was compacted past `cursor` or it is ahead.
        """

    @abc.abstractmethod
    async def compact_log(self, keep_last: int | None, older_than_ns: int | None) -> int:
        """Drop change rows (per user: all but the last `keep_last`, or older than a time)."""

    # ---- maintenance ---------------------------------------------------------------------
    @abc.abstractmethod
    async def collect_garbage(
        self, uploaded_before_ns: int, limit: int = 1000
    ) -> list[tuple[str, int]]:
        """Delete rows of up to `limit` unreferenced blocks uploaded before the time (and their
        availability rows), in one transaction; returns them. Call until it returns [].

        Must be called while holding the exclusive gc lock; the caller then deletes the files.
        """

    @abc.abstractmethod
    async def all_blocks(self) -> list[tuple[str, int, int]]:
        """Every block row as (block_id, size, refcount)."""

    @abc.abstractmethod
    async def check(self, repair: bool, lost_blocks: set[str]) -> FsckReport:
        """Check metadata consistency (refcounts, versions, tree, counters, availability).

        With `repair`, fix what is safe: recompute refcounts and counters, and drop availability
        rows of `lost_blocks` (missing or corrupt files) so clients upload them again.
        """
