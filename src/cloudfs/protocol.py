"""The wire protocol of docs/protocol.md as pure values (layer 0): node objects, error codes,
name rules and the conflicted-copy name. No I/O here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cloudfs import errors

MAX_NAME_BYTES = 255

# error code in a JSON body -> exception class (docs/protocol.md, "Error codes")
ERROR_CODES: dict[str, type[errors.CloudfsError]] = {
    "unauthorized": errors.UnauthorizedError,
    "bad_request": errors.BadRequestError,
    "invalid_name": errors.InvalidNameError,
    "name_too_long": errors.NameTooLongError,
    "bad_block_id": errors.BadRequestError,
    "hash_mismatch": errors.HashMismatchError,
    "not_found": errors.NodeNotFoundError,
    "exists": errors.NameExistsError,
    "not_empty": errors.DirectoryNotEmptyError,
    "not_a_directory": errors.NotADirectoryError_,
    "is_a_directory": errors.IsADirectoryError_,
    "invalid_move": errors.InvalidMoveError,
    "version_conflict": errors.VersionConflictError,
    "missing_blocks": errors.MissingBlocksError,
    "cursor_expired": errors.CursorExpiredError,
    "too_large": errors.TooLargeError,
    "quota_exceeded": errors.QuotaExceededError,
    "server_full": errors.ServerFullError,
}


def error_from_response(status: int, body: Any) -> errors.CloudfsError:
    """The exception for a 4xx/5xx answer. 5xx (other than 507) is temporary."""
    code = body.get("error") if isinstance(body, dict) else None
    message = (body.get("message") if isinstance(body, dict) else None) or f"HTTP {status}"
    details = (
        {k: v for k, v in body.items() if k not in ("error", "message")}
        if isinstance(body, dict)
        else {}
    )
    if code in ERROR_CODES:
        cls = ERROR_CODES[code]
        if cls is errors.MissingBlocksError:
            return errors.MissingBlocksError(message, missing=details.pop("missing", []), **details)
        return cls(f"{code}: {message}", **details)
    if status == 401:
        return errors.UnauthorizedError(message)
    if status == 404:
        return errors.NodeNotFoundError(message)
    if status == 413:
        return errors.TooLargeError(message)
    if status == 507:
        return errors.QuotaExceededError(message)
    if status >= 500 or status in (408, 429):
        return errors.TemporaryError(f"server answered {status}: {message}")
    return errors.ProtocolError(f"unexpected answer {status}: {message}")


@dataclass(frozen=True, slots=True)
class Node:
    """One node object as the server sends it. `blocks` is None unless asked for."""

    node_id: int
    parent: int | None
    name: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    version: int
    committed_by: str = ""
    committed_at_ns: int = 0
    target: str | None = None
    blocks: tuple[tuple[str, int], ...] | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Node:
        try:
            blocks = obj.get("blocks")
            return cls(
                node_id=int(obj["id"]),
                parent=None if obj.get("parent") is None else int(obj["parent"]),
                name=str(obj.get("name", "")),
                kind=str(obj["type"]),
                mode=int(obj.get("mode", 0o644)) & 0o7777,
                size=int(obj.get("size", 0)),
                mtime_ns=int(obj.get("mtime_ns", 0)),
                ctime_ns=int(obj.get("ctime_ns", obj.get("mtime_ns", 0))),
                version=int(obj.get("version", 1)),
                committed_by=str(obj.get("committed_by") or ""),
                committed_at_ns=int(obj.get("committed_at_ns") or 0),
                target=obj.get("target"),
                blocks=None if blocks is None else tuple((str(b), int(n)) for b, n in blocks),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.ProtocolError(f"malformed node object: {obj!r:.200}") from exc

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.node_id,
            "parent": self.parent,
            "name": self.name,
            "type": self.kind,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "version": self.version,
            "committed_by": self.committed_by,
            "committed_at_ns": self.committed_at_ns,
        }
        if self.target is not None:
            obj["target"] = self.target
        if self.blocks is not None:
            obj["blocks"] = [list(b) for b in self.blocks]
        return obj

    def with_blocks(self, blocks: tuple[tuple[str, int], ...] | None) -> Node:
        return replace(self, blocks=blocks)

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def decode_name(name: bytes) -> str:
    """A FUSE name (bytes) as a protocol name (str), checked against the naming rules.

    Raises:
        NameTooLongError: over 255 bytes.
        InvalidNameError: empty, '.', '..', contains '/' or NUL, or not UTF-8.
    """
    if len(name) > MAX_NAME_BYTES:
        raise errors.NameTooLongError(f"name is {len(name)} bytes, the limit is 255")
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise errors.InvalidNameError(f"invalid name {name!r}")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InvalidNameError(f"name {name!r} is not UTF-8") from exc


def conflict_name(name: str, device: str, when_s: float | None = None, attempt: int = 0) -> str:
    """`NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).EXT`, kept within 255 bytes.

    `attempt` > 0 adds ` N` inside the parenthesis when the first choice is taken.
    """
    stamp = time.strftime(
        "%Y-%m-%d %H%M%S", time.localtime(time.time() if when_s is None else when_s)
    )
    stem, ext = os.path.splitext(name)
    suffix = f" (conflicted copy from {device} {stamp}{'' if not attempt else f' {attempt}'})"
    tail = (suffix + ext).encode()
    room = MAX_NAME_BYTES - len(tail)
    stem_b = stem.encode()[: max(room, 1)]
    return stem_b.decode("utf-8", errors="ignore") + suffix + ext
