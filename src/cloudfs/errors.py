"""The client's one exception tree (layer 0): no FUSE and no HTTP in it.

Every error carries the errno the FUSE adapter answers with (`errno_of`), and says whether a
retry can help (`temporary`). Boundaries translate into it once (HTTP client) and out of it once
(FUSE adapter, CLI).

    CloudfsError
    ├── TemporaryError              server unreachable / 5xx / timeout: retry may help (EIO)
    ├── UnauthorizedError           401: token missing or wrong (EACCES)
    ├── BadRequestError             400 bad_request / bad_block_id (EINVAL)
    ├── InvalidNameError            400 invalid_name (EINVAL)
    ├── NameTooLongError            400 name_too_long, or a name checked locally (ENAMETOOLONG)
    ├── HashMismatchError           400 hash_mismatch on upload (EIO)
    ├── NodeNotFoundError           404 not_found (ENOENT)
    ├── NameExistsError             409 exists (EEXIST)
    ├── DirectoryNotEmptyError      409 not_empty (ENOTEMPTY)
    ├── NotADirectoryError_         409 not_a_directory (ENOTDIR)
    ├── IsADirectoryError_          409 is_a_directory (EISDIR)
    ├── InvalidMoveError            409 invalid_move (EINVAL)
    ├── VersionConflictError        409 version_conflict: handled by the commit (conflicted copy)
    ├── MissingBlocksError          409 missing_blocks: upload them and retry the commit
    ├── CursorExpiredError          410 cursor_expired: rescan
    ├── TooLargeError               413 too_large (EFBIG)
    ├── QuotaExceededError          507 quota_exceeded, or local cache full of dirty data (ENOSPC)
    ├── CorruptBlockError           a block failed BLAKE3 verification twice (EIO)
    ├── OperationNotPermittedError  hard links and other unsupported operations (EPERM)
    ├── NotSupportedError           an operation the drive does not implement (EOPNOTSUPP)
    ├── ProtocolError               the server answered something the protocol does not allow (EIO)
    └── ConfigError                 the client's config file cannot be read or is not valid (EIO)
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class CloudfsError(Exception):
    """Base of every cloudfs client error. `errno` is what the mount answers."""

    errno: int = _errno.EIO
    temporary: bool = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        self.message = message
        self.details = details


class TemporaryError(CloudfsError):
    """The server could not be reached or answered 5xx within the retry budget. Retry may help."""

    temporary = True


class UnauthorizedError(CloudfsError):
    """The server rejected the token (401). A retry cannot help."""

    errno = _errno.EACCES


class BadRequestError(CloudfsError):
    """The server called the request malformed (400). A bug or bad input; no retry."""

    errno = _errno.EINVAL


class InvalidNameError(CloudfsError):
    """A name breaks a naming rule (NUL, '/', '.', '..', not UTF-8). No retry."""

    errno = _errno.EINVAL


class NameTooLongError(CloudfsError):
    """A name is over 255 bytes. No retry."""

    errno = _errno.ENAMETOOLONG


class HashMismatchError(CloudfsError):
    """The server says an uploaded body does not hash to its id. Retrying re-reads the data."""

    errno = _errno.EIO


class NodeNotFoundError(CloudfsError):
    """No such node, block or version (or not ours). No retry."""

    errno = _errno.ENOENT


class NameExistsError(CloudfsError):
    """The target name is taken. `details['node']` may hold the existing node."""

    errno = _errno.EEXIST


class DirectoryNotEmptyError(CloudfsError):
    """A directory to remove or replace is not empty."""

    errno = _errno.ENOTEMPTY


class NotADirectoryError_(CloudfsError):
    """A parent or rename target is not a directory."""

    errno = _errno.ENOTDIR


class IsADirectoryError_(CloudfsError):
    """A file operation was applied to a directory."""

    errno = _errno.EISDIR


class InvalidMoveError(CloudfsError):
    """A directory moved into its own subtree, or the root moved or deleted."""

    errno = _errno.EINVAL


class VersionConflictError(CloudfsError):
    """The base version of a commit is no longer current: another device committed first.

    The commit path answers it with a conflicted copy; it never reaches the kernel.
    """

    errno = _errno.EIO


class MissingBlocksError(CloudfsError):
    """A commit referenced blocks the server does not have for us; `missing` lists them."""

    errno = _errno.EIO

    def __init__(self, message: str = "", missing: list[str] | None = None, **details: Any):
        super().__init__(message, **details)
        self.missing = list(missing or [])


class CursorExpiredError(CloudfsError):
    """The change log was compacted past our cursor; the client must rescan."""


class TooLargeError(CloudfsError):
    """A request body was over the server's limit."""

    errno = _errno.EFBIG


class QuotaExceededError(CloudfsError):
    """No space: the user's quota on the server, or local cache full of uncommitted data."""

    errno = _errno.ENOSPC


class CorruptBlockError(CloudfsError):
    """A block did not hash to its id, even after one refetch. Never returns wrong bytes."""

    errno = _errno.EIO


class OperationNotPermittedError(CloudfsError):
    """The operation is not allowed on this drive (hard links)."""

    errno = _errno.EPERM


class NotSupportedError(CloudfsError):
    """The drive does not implement this operation (e.g. RENAME_EXCHANGE, device nodes)."""

    errno = _errno.EOPNOTSUPP


class ProtocolError(CloudfsError):
    """The server answered something docs/protocol.md does not allow."""


class ConfigError(CloudfsError):
    """The login config (cloudfs.config.config_path) is unreadable or not the JSON object it
    should be. A retry cannot help: the message names the file and the problem."""


def errno_of(exc: CloudfsError) -> int:
    """The errno the kernel gets for `exc` (the one translation table is the class attributes)."""
    return exc.errno
