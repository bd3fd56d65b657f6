"""The v1 wire models of the core API (request and response bodies) as msgspec Structs.

Requests forbid unknown fields; the type constraints (ints in SQLite's range, block-id and list
lengths) are checked by the decoder, the rules a type cannot say (name rules, block-id digits,
block lengths that add up to `size`, which fields each node type takes) in `__post_init__`.
The OpenAPI document takes its schemas from here, so what is documented is what is checked.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cloudfs_server.errors import BadRequestError
from cloudfs_server.model import (
    BLOCK_ID_PATTERN,
    INT64_MAX,
    NAME_MAX_BYTES,
    ChangePage,
    Usage,
    VersionInfo,
    validate_block_id,
    validate_name,
)
from cloudfs_server.model import Change as ChangeRecord
from cloudfs_server.model import Node as NodeRecord

INT64_MIN = -(2**63)
MISSING_MAX_IDS = 10_000
TARGET_MAX_BYTES = 4095

# The decoder checks the length; `check_block_ids` the digits, in one C pass over all ids of a
# body (a per-id regex made decoding a 50,000-entry block list 3x slower; docs/architecture.md).
BlockId = Annotated[
    str,
    Meta(
        min_length=64,
        max_length=64,
        description="BLAKE3 of the bytes, 64 lowercase hex",
        extra_json_schema={"pattern": BLOCK_ID_PATTERN},
    ),
]
HEX_DIGITS = b"0123456789abcdef"
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
NodeId = Annotated[int, Meta(ge=1, le=INT64_MAX)]
TimeNs = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX, description="ns since the epoch")]
Length = Annotated[int, Meta(ge=1, le=INT64_MAX)]
BlockList = Annotated[
    list[tuple[BlockId, Length]], Meta(description="ordered [block_id, length] pairs")
]
# Name rules are checked by validate_name (its error codes: invalid_name, name_too_long); the
# schema says them for generators and readers.
Name = Annotated[
    str,
    Meta(
        description=f"1..{NAME_MAX_BYTES} UTF-8 bytes, no '/', no NUL, not '.' or '..'",
        extra_json_schema={
            "minLength": 1,
            "maxLength": NAME_MAX_BYTES,
            "pattern": r"^(?!\.\.?$)[^/\x00]+$",
        },
    ),
]
Kind = Literal["dir", "file", "symlink"]


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are a 400 naming them."""


def check_block_ids(block_ids: list[str]) -> None:
    """Raises BadBlockIdError naming the first id that is not lowercase hex."""
    joined = "".join(block_ids).encode("utf-8", "surrogatepass")
    if joined.translate(None, HEX_DIGITS):
        for block_id in block_ids:
            validate_block_id(block_id)


def _check_blocks(blocks: list[tuple[str, int]], size: int) -> None:
    check_block_ids([block_id for block_id, _ in blocks])
    total = sum(length for _, length in blocks)
    if total != size:
        raise BadRequestError(f"block lengths add up to {total}, but 'size' is {size}")


def _check_target(target: str) -> None:
    try:
        raw = target.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError("'target' is not valid UTF-8") from None
    if not raw or len(raw) > TARGET_MAX_BYTES or "\x00" in target:
        raise BadRequestError(f"'target' must be 1 to {TARGET_MAX_BYTES} bytes, no NUL")


# ---- requests ----------------------------------------------------------------------------------
class MissingBlocksRequest(Request):
    block_ids: Annotated[list[BlockId], Meta(max_length=MISSING_MAX_IDS)]

    def __post_init__(self) -> None:
        check_block_ids(self.block_ids)


class CreateNodeRequest(Request):
    name: Name
    kind: Kind = msgspec.field(name="type")
    mode: Count | None = None
    mtime_ns: TimeNs | None = None
    atime_ns: TimeNs | None = None
    target: Annotated[str, Meta(description="symlinks only (required for them)")] | UnsetType = (
        UNSET
    )
    size: Count | UnsetType = UNSET
    blocks: BlockList | UnsetType = UNSET

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.kind == "symlink":
            if self.target is UNSET:
                raise BadRequestError("missing field 'target' (symlinks need one)")
            _check_target(self.target)
        elif self.target is not UNSET:
            raise BadRequestError("'target' is only for symlinks")
        if self.kind == "file":
            self.blocks = [] if self.blocks is UNSET else self.blocks
            self.size = 0 if self.size is UNSET else self.size
            _check_blocks(self.blocks, self.size)
        elif self.blocks is not UNSET or self.size:
            raise BadRequestError("'size' and 'blocks' are only for files")


class CommitRequest(Request):
    base_version: Count
    size: Count
    blocks: BlockList
    mtime_ns: TimeNs | None = None

    def __post_init__(self) -> None:
        _check_blocks(self.blocks, self.size)


class PatchNodeRequest(Request):
    UNKNOWN_FIELD_HINTS: ClassVar[dict[str, str]] = {
        "size": "'size' cannot be patched; a size change is a content commit"
    }
    mode: Count | None = None
    mtime_ns: TimeNs | None = None
    atime_ns: TimeNs | None = None


class MoveRequest(Request):
    parent: NodeId
    name: Name
    replace: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name)


class RestoreTrashRequest(Request):
    parent: NodeId | None = None
    name: Name | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            validate_name(self.name)


# ---- batch ops (POST /v1/batch): one model per op, tagged by "op" ------------------------------
BATCH_MAX_OPS = 1000
Ref = Annotated[
    int | str,
    Meta(description="a node id, or the label of an earlier create of this batch"),
]


def check_ref(value: int | str, field_name: str) -> None:
    """A node id in 1..INT64_MAX, or a label of 1..255 UTF-8 bytes (whether an earlier op
    defined it is the batch's check)."""
    if isinstance(value, str):
        if not value or len(value.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
            raise BadRequestError(f"label '{field_name}' must be 1..{NAME_MAX_BYTES} bytes")
    elif not 1 <= value <= INT64_MAX:
        raise BadRequestError(f"'{field_name}' must be between 1 and {INT64_MAX}")


class OpHead(msgspec.Struct):
    """What a batch op is, read before the op's own model decodes it (other fields ignored)."""

    op: str


class CreateOp(CreateNodeRequest, tag="create", tag_field="op", kw_only=True):
    parent: Ref
    label: (
        Annotated[str, Meta(description="later ops of the batch may name this node so")] | None
    ) = None

    def __post_init__(self) -> None:
        if self.label is not None:
            check_ref(self.label, "label")
        check_ref(self.parent, "parent")
        super().__post_init__()


class CommitOp(CommitRequest, tag="commit", tag_field="op", kw_only=True):
    node: Ref

    def __post_init__(self) -> None:
        check_ref(self.node, "node")
        super().__post_init__()


class SetattrOp(PatchNodeRequest, tag="setattr", tag_field="op", kw_only=True):
    node: Ref

    def __post_init__(self) -> None:
        check_ref(self.node, "node")


class MoveOp(MoveRequest, tag="move", tag_field="op", kw_only=True):
    node: Ref
    parent: Ref  # type: ignore[assignment]  # a label of this batch, too

    def __post_init__(self) -> None:
        check_ref(self.node, "node")
        check_ref(self.parent, "parent")
        super().__post_init__()


class DeleteOp(Request, tag="delete", tag_field="op", kw_only=True):
    node: Ref

    def __post_init__(self) -> None:
        check_ref(self.node, "node")


BatchOp = CreateOp | CommitOp | SetattrOp | MoveOp | DeleteOp
BATCH_OPS: dict[str, type[Request]] = {
    "create": CreateOp,
    "commit": CommitOp,
    "setattr": SetattrOp,
    "move": MoveOp,
    "delete": DeleteOp,
}


class BatchRequest(Request):
    """What the document says of a batch body; the route decodes it op by op (http/batch.py),
    so that every error names its op."""

    ops: Annotated[list[BatchOp], Meta(min_length=1, max_length=BATCH_MAX_OPS)]


# ---- answers -----------------------------------------------------------------------------------
class Health(msgspec.Struct):
    ok: bool


class Me(msgspec.Struct):
    user: str
    user_id: int
    root: int
    quota_bytes: int | None


class UsageOut(msgspec.Struct):
    logical_bytes: int
    stored_bytes: int
    dedup_ratio: float
    quota_bytes: int | None
    files: int
    directories: int


class BlockStored(msgspec.Struct):
    block_id: BlockId
    size: int
    stored: bool


class PackStored(msgspec.Struct):
    blocks: list[BlockStored]


class Missing(msgspec.Struct):
    missing: list[BlockId]


class Node(msgspec.Struct):
    """A node. `subdirs` (live child directories) for directories; `target` for symlinks;
    `blocks` for files where asked; the last three in the trash only."""

    node_id: int = msgspec.field(name="id")
    parent: int | None
    name: str
    kind: Kind = msgspec.field(name="type")
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    version: int
    committed_by: str
    committed_at_ns: int
    subdirs: int | UnsetType = UNSET
    target: str | UnsetType = UNSET
    blocks: BlockList | UnsetType = UNSET
    trashed_at_ns: int | UnsetType = UNSET
    original_parent: int | UnsetType | None = UNSET
    original_path: str | UnsetType | None = UNSET


class Children(msgspec.Struct):
    entries: list[Node]
    next: str | None


class Moved(msgspec.Struct):
    node: Node
    replaced: int | None


class Deleted(msgspec.Struct):
    trashed: bool


class BatchOutcome(msgspec.Struct):
    """One op's result. Done (`ok` true): `node` (create/commit/setattr/move), `replaced`
    (move), `trashed` (delete). Not applied (`ok` false): the status and body the single route
    would answer, details included (`node` of exists, `label` of dependency_failed, ...)."""

    ok: bool
    node: Node | UnsetType = UNSET
    replaced: int | UnsetType | None = UNSET
    trashed: bool | UnsetType = UNSET
    status: int | UnsetType = UNSET
    error: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    label: str | UnsetType = UNSET


class BatchResults(msgspec.Struct):
    results: list[BatchOutcome]


class Version(msgspec.Struct):
    version: int
    size: int
    mtime_ns: int
    committed_at_ns: int
    device: str
    blocks: BlockList | UnsetType = UNSET


class Versions(msgspec.Struct):
    versions: list[Version]


class Trash(msgspec.Struct):
    entries: list[Node]


class Change(msgspec.Struct):
    """One change-log entry; `old_parent`/`old_name` for moves only."""

    seq: int
    op: Literal["create", "modify", "setattr", "move", "delete", "restore"]
    node: int
    kind: Kind = msgspec.field(name="type")
    parent: int | None
    name: str
    version: int
    device: str
    time_ns: int
    old_parent: int | UnsetType | None = UNSET
    old_name: str | UnsetType | None = UNSET


class Changes(msgspec.Struct):
    changes: list[Change]
    cursor: int
    more: bool
    retry_after_s: float | UnsetType = UNSET


# ---- records → answers -------------------------------------------------------------------------
def node_out(node: NodeRecord) -> Node:
    out = Node(
        node_id=node.node_id,
        parent=node.parent,
        name=node.name,
        kind=node.kind,  # type: ignore[arg-type]  # the store only holds KINDS
        mode=node.mode,
        size=node.size,
        mtime_ns=node.mtime_ns,
        ctime_ns=node.ctime_ns,
        atime_ns=node.atime_ns,
        version=node.version,
        committed_by=node.committed_by,
        committed_at_ns=node.committed_at_ns,
    )
    if node.kind == "dir":
        out.subdirs = node.subdirs
    if node.kind == "symlink" and node.target is not None:
        out.target = node.target
    if node.blocks is not None:
        out.blocks = node.blocks
    if node.trashed_at_ns is not None:
        out.trashed_at_ns = node.trashed_at_ns
        out.original_parent = node.original_parent
        out.original_path = node.original_path
    return out


def version_out(version: VersionInfo) -> Version:
    out = Version(
        version=version.version,
        size=version.size,
        mtime_ns=version.mtime_ns,
        committed_at_ns=version.committed_at_ns,
        device=version.device,
    )
    if version.blocks is not None:
        out.blocks = version.blocks
    return out


def change_out(change: ChangeRecord) -> Change:
    out = Change(
        seq=change.seq,
        op=change.op,  # type: ignore[arg-type]  # the store only writes these ops
        node=change.node_id,
        kind=change.kind,  # type: ignore[arg-type]
        parent=change.parent,
        name=change.name,
        version=change.version,
        device=change.device,
        time_ns=change.time_ns,
    )
    if change.op == "move":
        out.old_parent = change.old_parent
        out.old_name = change.old_name
    return out


def changes_out(page: ChangePage, retry_after_s: float | None) -> Changes:
    out = Changes([change_out(c) for c in page.changes], page.cursor, page.more)
    if retry_after_s is not None:
        out.retry_after_s = retry_after_s
    return out


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        usage.logical_bytes,
        usage.stored_bytes,
        usage.dedup_ratio,
        usage.quota_bytes,
        usage.files,
        usage.directories,
    )


# ---- login (POST /v1/login) --------------------------------------------------------------------
class LoginRequest(Request):
    """A password login of one device; the answer's token replaces that device's old one."""

    user: Annotated[str, Meta(min_length=1, max_length=NAME_MAX_BYTES)]
    password: Annotated[str, Meta(max_length=1024)]
    device: Annotated[str, Meta(min_length=1, max_length=255)]

    def __post_init__(self) -> None:
        if len(self.device.encode("utf-8", "surrogatepass")) > 255:
            raise BadRequestError("'device' is longer than 255 bytes")
        if any(ord(c) < 0x20 or c == "\x7f" for c in self.device):
            raise BadRequestError("'device' must not contain control characters")
        try:
            self.device.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError("'device' is not valid UTF-8") from None


class LoginAnswer(msgspec.Struct):
    token: str
    device: str
    user: str
