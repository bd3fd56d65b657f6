"""Value types shared by routes and stores, and the semantic checks of names, block ids and
device names (request shapes are the wire models' job: http/models.py).

Pure: no I/O. Every validator raises a `BadRequestError` subclass whose message names the rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cloudfs_server.errors import (
    BadBlockIdError,
    BadRequestError,
    InvalidNameError,
    NameTooLongError,
    ServerError,
)

NAME_MAX_BYTES = 255
DEVICE_MAX_BYTES = 255
MODE_MASK = 0o7777
BLOCK_ID_PATTERN = "^[0-9a-f]{64}$"
BLOCK_ID_RE = re.compile(r"[0-9a-f]{64}")
KINDS = ("dir", "file", "symlink")
DEFAULT_MODE = {"dir": 0o755, "file": 0o644, "symlink": 0o777}
# Largest integer SQLite stores (signed 64-bit); bigger JSON ints would overflow.
INT64_MAX = 2**63 - 1

BlockList = list[tuple[str, int]]


def validate_name(name: object, field_name: str = "name") -> str:
    """Return `name` if it is a valid node name, else raise naming the broken rule."""
    if not isinstance(name, str):
        raise BadRequestError(f"'{field_name}' must be a string")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(f"'{field_name}' is not valid UTF-8") from None
    if not raw:
        raise InvalidNameError(f"'{field_name}' must not be empty")
    if len(raw) > NAME_MAX_BYTES:
        raise NameTooLongError(
            f"'{field_name}' is {len(raw)} bytes; names are at most {NAME_MAX_BYTES} bytes"
        )
    if "/" in name:
        raise InvalidNameError(f"'{field_name}' must not contain '/'")
    if "\x00" in name:
        raise InvalidNameError(f"'{field_name}' must not contain NUL")
    if name in (".", ".."):
        raise InvalidNameError(f"'{field_name}' must not be '.' or '..'")
    return name


def validate_block_id(block_id: object) -> str:
    if not isinstance(block_id, str) or not BLOCK_ID_RE.fullmatch(block_id):
        raise BadBlockIdError(f"block id {str(block_id)[:80]!r} is not 64 lowercase hex characters")
    return block_id


def validate_device(device: str | None) -> str:
    if device is None or device == "":
        return "api"
    try:
        raw = device.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError("X-Cloudfs-Device is not valid UTF-8") from None
    if len(raw) > DEVICE_MAX_BYTES:
        raise BadRequestError(f"X-Cloudfs-Device is longer than {DEVICE_MAX_BYTES} bytes")
    return device


@dataclass(frozen=True)
class UserInfo:
    user_id: int
    name: str
    root: int
    quota_bytes: int | None


@dataclass(frozen=True)
class TokenInfo:
    """One device token of a user (the token itself is never stored, only its SHA-256)."""

    device: str
    created_at_ns: int
    last_used_ns: int | None  # updated at most once a minute (TOKEN_TOUCH_NS); None: never


# The device name of the token `add-user` and `reset-token` print, and of the token a
# deployment had before per-device tokens (schema version 3).
ADMIN_DEVICE = "admin-cli"


@dataclass
class Node:
    node_id: int
    parent: int | None
    name: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    version: int
    committed_by: str
    committed_at_ns: int
    target: str | None = None
    blocks: BlockList | None = None
    # Last access time (set by create and setattr only; content commits leave it alone).
    atime_ns: int = 0
    # Directories: the number of live child directories (st_nlink = 2 + subdirs).
    subdirs: int = 0
    # Only for trashed nodes.
    trashed_at_ns: int | None = None
    original_parent: int | None = None
    original_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.node_id,
            "parent": self.parent,
            "name": self.name,
            "type": self.kind,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "atime_ns": self.atime_ns,
            "version": self.version,
            "committed_by": self.committed_by,
            "committed_at_ns": self.committed_at_ns,
        }
        if self.kind == "dir":
            out["subdirs"] = self.subdirs
        if self.kind == "symlink":
            out["target"] = self.target
        if self.blocks is not None:
            out["blocks"] = [[b, n] for b, n in self.blocks]
        if self.trashed_at_ns is not None:
            out["trashed_at_ns"] = self.trashed_at_ns
            out["original_parent"] = self.original_parent
            out["original_path"] = self.original_path
        return out


@dataclass(frozen=True)
class VersionInfo:
    version: int
    size: int
    mtime_ns: int
    committed_at_ns: int
    device: str
    blocks: BlockList | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "committed_at_ns": self.committed_at_ns,
            "device": self.device,
        }
        if self.blocks is not None:
            out["blocks"] = [[b, n] for b, n in self.blocks]
        return out


@dataclass(frozen=True)
class Change:
    seq: int
    op: str
    node_id: int
    kind: str
    parent: int | None
    name: str
    version: int
    device: str
    time_ns: int
    old_parent: int | None = None
    old_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "op": self.op,
            "node": self.node_id,
            "type": self.kind,
            "parent": self.parent,
            "name": self.name,
            "version": self.version,
            "device": self.device,
            "time_ns": self.time_ns,
        }
        if self.op == "move":
            out["old_parent"] = self.old_parent
            out["old_name"] = self.old_name
        return out


@dataclass(frozen=True)
class ChangePage:
    changes: list[Change]
    cursor: int
    more: bool


@dataclass(frozen=True)
class Usage:
    logical_bytes: int
    stored_bytes: int
    quota_bytes: int | None
    files: int
    directories: int

    @property
    def dedup_ratio(self) -> float:
        return round(self.logical_bytes / self.stored_bytes, 4) if self.stored_bytes else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "logical_bytes": self.logical_bytes,
            "stored_bytes": self.stored_bytes,
            "dedup_ratio": self.dedup_ratio,
            "quota_bytes": self.quota_bytes,
            "files": self.files,
            "directories": self.directories,
        }


@dataclass
class ServerUsage:
    """Whole-server figures for `cloudfs-server usage`."""

    users: list[tuple[str, Usage]] = field(default_factory=list)
    logical_bytes: int = 0  # live files of all users
    referenced_bytes: int = 0  # sum of sizes of every version row (current, history, trash)
    stored_bytes: int = 0  # sum of distinct stored blocks
    blocks: int = 0

    @property
    def dedup_ratio(self) -> float:
        return round(self.referenced_bytes / self.stored_bytes, 4) if self.stored_bytes else 1.0


@dataclass
class FsckReport:
    """Problems found by a check; `errors` make fsck exit non-zero, `notes` do not."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)


# ---- batches (POST /v1/batch) ---------------------------------------------------------------
# A reference to a node in a batch op: a node id, or the `label` of an earlier create of the
# same batch (meaning the node that create made).
NodeRef = int | str
BATCH_MAX_OPS = 1000


@dataclass(frozen=True)
class CreateOp:
    parent: NodeRef
    name: str
    kind: str
    mode: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    target: str | None = None
    size: int = 0
    blocks: BlockList = field(default_factory=list)
    label: str | None = None
    op: ClassVar[str] = "create"


@dataclass(frozen=True)
class CommitOp:
    node: NodeRef
    base_version: int
    size: int
    blocks: BlockList
    mtime_ns: int | None = None
    op: ClassVar[str] = "commit"


@dataclass(frozen=True)
class SetattrOp:
    node: NodeRef
    mode: int | None = None
    mtime_ns: int | None = None
    atime_ns: int | None = None
    op: ClassVar[str] = "setattr"


@dataclass(frozen=True)
class MoveOp:
    node: NodeRef
    parent: NodeRef
    name: str
    replace: bool = False
    op: ClassVar[str] = "move"


@dataclass(frozen=True)
class DeleteOp:
    node: NodeRef
    op: ClassVar[str] = "delete"


BatchOp = CreateOp | CommitOp | SetattrOp | MoveOp | DeleteOp


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one batch op: `error` set (nothing of the op applied), or the op's value:
    `node` for create/commit/setattr/move, `replaced` for move, `trashed` for delete. Its wire
    form is http/batch.py's `outcome()` (models.BatchOutcome)."""

    op: str
    node: Node | None = None
    replaced: int | None = None
    trashed: bool | None = None
    error: ServerError | None = None
