"""The server's one exception tree; `middleware.error_middleware` translates it to HTTP.

Tree (every class carries its protocol `code` and HTTP `status`; see docs/protocol.md):

    ServerError                      base; never raised itself
    ├── UnauthorizedError      401   no or bad bearer token. Retry only with another token.
    ├── BadRequestError        400   malformed JSON, wrong types, missing fields. Never retryable.
    │   ├── InvalidNameError   400   a name breaks a rule (the message names it)
    │   ├── NameTooLongError   400   a name over 255 UTF-8 bytes
    │   ├── BadBlockIdError    400   not 64 lowercase hex chars
    │   └── HashMismatchError  400   an uploaded body does not hash to its address
    ├── NotFoundError          404   no such node/block/version, or another user's
    ├── ConflictError          409   base of the namespace / content conflicts:
    │   ├── ExistsError              name taken (`node` = the existing node)
    │   ├── NotEmptyError            directory not empty
    │   ├── NotDirError              parent or target is not a directory
    │   ├── IsDirError               file operation on a directory
    │   ├── InvalidMoveError         directory into its own subtree, or the root
    │   ├── VersionConflictError     base version not current (retry after a merge)
    │   ├── MissingBlocksError       blocks not available (upload them, then retry)
    │   └── DependencyFailedError    a batch op names the label of a create that failed
    │                                (`label`); fix that create, then retry both
    ├── CursorExpiredError     410   change log compacted past the cursor (rescan)
    ├── TooLargeError          413   body over the limit
    ├── RateLimitedError       429   too many failed logins for this user name or address;
    │                                retry after `Retry-After` seconds
    ├── RangeNotSatisfiableError 416 a block Range outside the block, malformed, or multi-part
    ├── QuotaExceededError     507   a commit would exceed the user's quota
    ├── ServerFullError        507   the server's disk (block files or database) is full. A
    │                                retry helps once an operator frees space.
    ├── StoreUnavailableError  503   a store (S3, the PostgreSQL database) failed temporarily or
    │                                cannot be reached; retry after `Retry-After` seconds (nothing
    │                                was changed, or the outcome of a commit is unknown: re-read
    │                                before redoing it)
    ├── StoreCorruptError      500   the stores disagree with themselves (fsck needed)
    └── StoreConfigError       500   the block store options are unusable or do not match the
                                     stored data (wrong key, other layers); raised at start-up
"""

from __future__ import annotations

from typing import Any


class ServerError(Exception):
    """Base of every error the server raises on purpose."""

    code = "internal"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}

    def headers(self) -> dict[str, str]:
        """Extra response headers the status calls for."""
        return {}


class UnauthorizedError(ServerError):
    code, status = "unauthorized", 401


class BadRequestError(ServerError):
    code, status = "bad_request", 400


class InvalidNameError(BadRequestError):
    code = "invalid_name"


class NameTooLongError(BadRequestError):
    code = "name_too_long"


class BadBlockIdError(BadRequestError):
    code = "bad_block_id"


class HashMismatchError(BadRequestError):
    code = "hash_mismatch"


class NotFoundError(ServerError):
    code, status = "not_found", 404


class ConflictError(ServerError):
    code, status = "conflict", 409


class ExistsError(ConflictError):
    code = "exists"


class NotEmptyError(ConflictError):
    code = "not_empty"


class NotDirError(ConflictError):
    code = "not_a_directory"


class IsDirError(ConflictError):
    code = "is_a_directory"


class InvalidMoveError(ConflictError):
    code = "invalid_move"


class VersionConflictError(ConflictError):
    code = "version_conflict"


class MissingBlocksError(ConflictError):
    code = "missing_blocks"


class DependencyFailedError(ConflictError):
    code = "dependency_failed"


class CursorExpiredError(ServerError):
    code, status = "cursor_expired", 410


class TooLargeError(ServerError):
    code, status = "too_large", 413


class RangeNotSatisfiableError(ServerError):
    code, status = "range_not_satisfiable", 416

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.details['size']}"}


class RateLimitedError(ServerError):
    """Too many failed logins (per user name or client address) in the last minute."""

    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.details["retry_after_s"])}


class QuotaExceededError(ServerError):
    code, status = "quota_exceeded", 507


class ServerFullError(ServerError):
    """The server is out of disk space (ENOSPC/EDQUOT, SQLITE_FULL); not the user's quota."""

    code, status = "server_full", 507


class StoreUnavailableError(ServerError):
    """A store's service failed temporarily: the block store (connection refused, timeout, 5xx,
    throttling; nothing was stored) or the PostgreSQL database (unreachable or gone mid-call;
    the engines reconnect by themselves). Retrying after `retry_after_s` can help."""

    code, status = "store_unavailable", 503

    def __init__(self, message: str, retry_after_s: int = 5, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.details["retry_after_s"])}


class StoreCorruptError(ServerError):
    code, status = "store_corrupt", 500


class StoreConfigError(ServerError):
    """Raised while opening the stores: a bad `--blocks` URL or key file, or options that do
    not match how the stored blocks were written (e.g. a wrong encryption key). The server
    refuses to start; no retry helps until the options are fixed."""

    code, status = "store_config", 500
