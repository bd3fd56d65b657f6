"""The bulk routes of a local-first client: `POST /v1/batch` (many namespace ops in one
transaction) and `POST /v1/blocks/pack` (many small blocks in one body), and their OpenAPI entries.

Self-contained on purpose (parsing, handlers, `paths()`), so the routes convert as one unit.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cloudfs_server.engines.blockstore import StagedBlock
from cloudfs_server.errors import BadRequestError, HashMismatchError, TooLargeError
from cloudfs_server.http.openapi import DEVICE, J, _err, _json, _op, _ref, _resp
from cloudfs_server.http.routes import (
    BIG_JSON_BYTES,
    COMMIT_FIELDS,
    CREATE_FIELDS,
    MOVE_FIELDS,
    SETATTR_FIELDS,
    device_of,
    json_answer,
    json_body,
    node_ref,
    notify,
    offload,
    parse_commit,
    parse_create,
    parse_move,
    parse_setattr,
    reject_unknown,
    require,
)
from cloudfs_server.http.state import BLOCKS, CONFIG, GC_LOCK, META, current_user
from cloudfs_server.model import BATCH_MAX_OPS, BatchOp, DeleteOp, NodeRef

PACK_TYPE = "application/x-cloudfs-pack"
PACK_MAX_RECORDS = 1000
PACK_MAX_BYTES = 16 << 20
# A record: 32 raw bytes of BLAKE3 digest, a big-endian u32 length, then that many bytes.
RECORD_HEAD = struct.Struct(">32sI")
# Blocks of one pack staged / published at once: their fsyncs overlap (4 -> 8 took 1,000 x 4 KiB
# from 5.2 s to 2.6 s here; the default executor's threads bound it anyway).
PACK_PARALLEL = 8
# Batches with more ops than this build their answer in a worker thread.
BIG_BATCH = 100


# ---- POST /v1/batch ------------------------------------------------------------------------
def parse_op(raw: object, labels: set[str]) -> BatchOp:
    """One op of a batch; `labels` holds the labels defined by earlier ops (updated here)."""
    if not isinstance(raw, dict):
        raise BadRequestError("must be a JSON object")
    kind = require(raw, "op")
    body = {k: v for k, v in raw.items() if k != "op"}

    def ref(key: str) -> NodeRef:
        value = node_ref(require(body, key), key, labels=True)
        if isinstance(value, str) and value not in labels:
            raise BadRequestError(f"'{key}' names label {value!r}, not defined by an earlier op")
        return value

    op: BatchOp
    if kind == "create":
        reject_unknown(body, CREATE_FIELDS | {"parent", "label"})
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            raise BadRequestError("'label' must be a string")
        if label is not None:
            node_ref(label, "label", labels=True)  # the length rule of references
        parent = ref("parent")
        op = parse_create(body, parent, label)
        if label is not None:
            if label in labels:
                raise BadRequestError(f"label {label!r} is defined twice")
            labels.add(label)
    elif kind == "commit":
        reject_unknown(body, COMMIT_FIELDS | {"node"})
        op = parse_commit(body, ref("node"))
    elif kind == "setattr":
        reject_unknown(body, SETATTR_FIELDS | {"node", "size"})
        op = parse_setattr(body, ref("node"))
    elif kind == "move":
        reject_unknown(body, MOVE_FIELDS | {"node"})
        node = ref("node")
        op = parse_move(body, node, labels=True)
        if isinstance(op.parent, str) and op.parent not in labels:
            raise BadRequestError(
                f"'parent' names label {op.parent!r}, not defined by an earlier op"
            )
    elif kind == "delete":
        reject_unknown(body, {"node"})
        op = DeleteOp(ref("node"))
    else:
        raise BadRequestError(
            f"'op' is {str(kind)[:40]!r}; one of create, commit, setattr, move, delete"
        )
    return op


def parse_batch(body: dict[str, Any]) -> list[BatchOp]:
    """The typed ops of a batch body, or a BadRequestError (naming `ops[i]`) for the whole."""
    reject_unknown(body, {"ops"})
    ops = require(body, "ops")
    if not isinstance(ops, list):
        raise BadRequestError("'ops' must be a list")
    if not 1 <= len(ops) <= BATCH_MAX_OPS:
        raise BadRequestError(f"'ops' holds {len(ops)} ops; 1 to {BATCH_MAX_OPS} are allowed")
    labels: set[str] = set()
    out: list[BatchOp] = []
    for index, raw in enumerate(ops):
        try:
            out.append(parse_op(raw, labels))
        except BadRequestError as exc:
            # Same class (so the same code: invalid_name, bad_block_id, ...), prefixed message.
            raise type(exc)(f"ops[{index}]: {exc.message}", op=index, **exc.details) from None
    return out


async def batch(request: web.Request) -> web.Response:
    body = await json_body(request)
    big = (request.content_length or 0) > BIG_JSON_BYTES
    ops: list[BatchOp] = await offload(parse_batch, body) if big else parse_batch(body)
    results = await request.app[META].apply_batch(
        current_user(request).user_id, ops, device_of(request)
    )
    if any(r.error is None for r in results):
        await notify(request)  # once, after the batch's one commit

    def answer() -> dict[str, Any]:
        return {"results": [r.to_json() for r in results]}

    many = len(results) > BIG_BATCH
    return await json_answer(await offload(answer) if many else answer(), big=many)


# ---- POST /v1/blocks/pack ------------------------------------------------------------------
def parse_pack(raw: bytes, block_max_bytes: int) -> list[tuple[str, bytes]]:
    """(block_id, bytes) of every record, in order. Raises BadRequestError (truncated),
    TooLargeError (too many records, or a record over the block limit)."""
    out: list[tuple[str, bytes]] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(raw):
        index = len(out)
        if index >= PACK_MAX_RECORDS:
            raise TooLargeError(f"a pack holds at most {PACK_MAX_RECORDS} records")
        if len(raw) - offset < RECORD_HEAD.size:
            raise BadRequestError(
                f"record {index} is truncated: its header needs {RECORD_HEAD.size} bytes, "
                f"{len(raw) - offset} are left"
            )
        digest, length = RECORD_HEAD.unpack_from(raw, offset)
        offset += RECORD_HEAD.size
        block_id = digest.hex()
        if length > block_max_bytes:
            raise TooLargeError(
                f"record {index} ({block_id}) is {length} bytes; blocks are limited to "
                f"{block_max_bytes} bytes",
                block_id=block_id,
            )
        if len(raw) - offset < length:
            raise BadRequestError(
                f"record {index} ({block_id}) is truncated: {length} bytes announced, "
                f"{len(raw) - offset} are left",
                block_id=block_id,
            )
        out.append((block_id, bytes(view[offset : offset + length])))
        offset += length
    return out


async def _read_capped(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise TooLargeError(f"a pack body is limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_pack(request: web.Request) -> web.Response:
    """Store every record exactly as `PUT /v1/blocks/{id}` would (see routes.put_block)."""
    user = current_user(request)
    if request.content_type != PACK_TYPE:
        raise BadRequestError(f"a pack's Content-Type must be {PACK_TYPE}")
    if request.content_length is not None and request.content_length > PACK_MAX_BYTES:
        raise TooLargeError(f"a pack body is limited to {PACK_MAX_BYTES} bytes")
    limit = request.app[CONFIG].block_max_bytes
    records = parse_pack(await _read_capped(request, PACK_MAX_BYTES), limit)
    blocks = request.app[BLOCKS]
    meta = request.app[META]
    # Blocks this user already has are only verified (as PUT does); the rule depends only on
    # this user's own availability, never on whether someone else stored the block.
    missing = set(await meta.missing_blocks(user.user_id, [b for b, _ in records]))
    sem = asyncio.Semaphore(PACK_PARALLEL)
    # Every block staged so far, so `finally` discards it whatever happens (also a client that
    # goes away mid-pack); a block that fails to stage discards itself.
    staged_any: list[StagedBlock] = []

    async def stage(block_id: str, data: bytes) -> StagedBlock:
        async with sem:
            item = await blocks.stage(block_id, _one(data), limit, block_id not in missing)
            staged_any.append(item)
            return item

    try:
        outcomes = await asyncio.gather(*(stage(b, d) for b, d in records), return_exceptions=True)
        staged = [o for o in outcomes if isinstance(o, StagedBlock)]
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, HashMismatchError):
                block_id = records[index][0]
                raise HashMismatchError(
                    f"record {index}: {outcome.message}", block_id=block_id, **outcome.details
                )
            if isinstance(outcome, BaseException):
                raise outcome
        async with request.app[GC_LOCK].shared():

            async def publish(item: StagedBlock) -> None:
                async with sem:
                    await blocks.publish(item)

            await asyncio.gather(*(publish(s) for s in staged))
            # Concurrent rows share the writer's group commits (one transaction per group).
            new = await asyncio.gather(
                *(meta.record_upload(user.user_id, s.block_id, s.size) for s in staged)
            )
    finally:
        await asyncio.shield(asyncio.gather(*(blocks.discard(s) for s in staged_any)))
    return web.json_response(
        {
            "blocks": [
                {"block_id": s.block_id, "size": s.size, "stored": n}
                for s, n in zip(staged, new, strict=True)
            ]
        }
    )


def setup(app: web.Application) -> None:
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, path, handler, name=name)


ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/batch", batch, "batch"),
    ("POST", "/v1/blocks/pack", put_pack, "put_pack"),
]


# ---- OpenAPI -------------------------------------------------------------------------------
REF: J = {
    "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
    "description": "a node id, or the label of an earlier create of this batch",
}
BLOCKS_SCHEMA: J = {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}}


def _batch_op_schema() -> J:
    def obj(op: str, required: list[str], props: J) -> J:
        return {
            "type": "object",
            "required": ["op", *required],
            "additionalProperties": False,
            "properties": {"op": {"const": op}, **props},
        }

    integer = {"type": "integer"}
    return {
        "oneOf": [
            obj(
                "create",
                ["parent", "name", "type"],
                {
                    "parent": REF,
                    "name": {"type": "string"},
                    "type": {"enum": ["dir", "file", "symlink"]},
                    "mode": integer,
                    "mtime_ns": integer,
                    "atime_ns": integer,
                    "target": {"type": "string"},
                    "size": integer,
                    "blocks": BLOCKS_SCHEMA,
                    "label": {"type": "string"},
                },
            ),
            obj(
                "commit",
                ["node", "base_version", "size", "blocks"],
                {
                    "node": REF,
                    "base_version": integer,
                    "size": integer,
                    "blocks": BLOCKS_SCHEMA,
                    "mtime_ns": integer,
                },
            ),
            obj(
                "setattr",
                ["node"],
                {"node": REF, "mode": integer, "mtime_ns": integer, "atime_ns": integer},
            ),
            obj(
                "move",
                ["node", "parent", "name"],
                {
                    "node": REF,
                    "parent": REF,
                    "name": {"type": "string"},
                    "replace": {"type": "boolean"},
                },
            ),
            obj("delete", ["node"], {"node": REF}),
        ]
    }


def paths() -> J:
    result = {
        "oneOf": [
            {
                "type": "object",
                "required": ["ok"],
                "description": "done: node (create/commit/setattr/move), replaced (move), "
                "trashed (delete)",
                "properties": {
                    "ok": {"const": True},
                    "node": _ref("Node"),
                    "replaced": {"type": ["integer", "null"]},
                    "trashed": {"type": "boolean"},
                },
            },
            {
                "type": "object",
                "required": ["ok", "status", "error", "message"],
                "description": "not applied: the status and body the single route answers",
                "properties": {
                    "ok": {"const": False},
                    "status": {"type": "integer"},
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                },
                "additionalProperties": True,
            },
        ]
    }
    return {
        "/v1/batch": {
            "post": _op(
                "batch",
                "apply 1..1000 namespace ops in order, each atomic, in one transaction",
                {
                    "200": _resp(
                        "one result per op, in order",
                        {
                            "type": "object",
                            "properties": {"results": {"type": "array", "items": result}},
                        },
                    ),
                    "400": _err("bad_request", "invalid_name", "name_too_long", "bad_block_id"),
                    "413": _err("too_large"),
                },
                params=[DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "required": ["ops"],
                        "additionalProperties": False,
                        "properties": {
                            "ops": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": BATCH_MAX_OPS,
                                "items": _batch_op_schema(),
                            }
                        },
                    }
                ),
            )
        },
        "/v1/blocks/pack": {
            "post": _op(
                "put_pack",
                "upload up to 1000 blocks in one body (each stored as PUT /v1/blocks/{id} does)",
                {
                    "200": _resp(
                        "the blocks in record order; stored = new for this user",
                        {
                            "type": "object",
                            "properties": {
                                "blocks": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "block_id": {"type": "string"},
                                            "size": {"type": "integer"},
                                            "stored": {"type": "boolean"},
                                        },
                                    },
                                }
                            },
                        },
                    ),
                    "400": _err("bad_request", "hash_mismatch"),
                    "413": _err("too_large"),
                    "503": _err("store_unavailable"),
                },
                body={
                    "content": {
                        PACK_TYPE: {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "records of [32-byte BLAKE3 digest][u32 big-endian "
                                "length][bytes]; <= 1000 records, <= 16 MiB",
                            }
                        }
                    }
                },
            )
        },
    }
