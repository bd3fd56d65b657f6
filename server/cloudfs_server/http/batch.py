"""The bulk routes of a local-first client: `POST /v1/batch` (many namespace ops in one
transaction) and `POST /v1/blocks/pack` (many small blocks in one body), and their Route entries.

A batch decodes op by op (models.BATCH_OPS, tagged by "op") so that a shape error names its op.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from aiohttp import web

from cloudfs_server import model
from cloudfs_server.engines.blockstore import StagedBlock
from cloudfs_server.errors import BadRequestError, HashMismatchError, TooLargeError
from cloudfs_server.http import contract
from cloudfs_server.http import models as m
from cloudfs_server.http.contract import Route
from cloudfs_server.http.routes import DEVICE, NAME_ERRORS, device_of, notify
from cloudfs_server.http.state import BLOCKS, CONFIG, GC_LOCK, META, current_user

PACK_TYPE = "application/x-cloudfs-pack"
PACK_MAX_RECORDS = 1000
PACK_MAX_BYTES = 16 << 20
# A record: 32 raw bytes of BLAKE3 digest, a big-endian u32 length, then that many bytes.
RECORD_HEAD = struct.Struct(">32sI")
# Blocks of one pack staged / published at once: their fsyncs overlap (4 -> 8 took 1,000 x 4 KiB
# from 5.2 s to 2.6 s here; the default executor's threads bound it anyway).
PACK_PARALLEL = 8


# ---- POST /v1/batch ------------------------------------------------------------------------
class BatchShape(m.Request):
    """A batch body before its ops are decoded."""

    ops: list[msgspec.Raw]


class BatchParser:
    """Decodes a batch body into the store's ops (model.BatchOp); a shape error anywhere is one
    BadRequestError for the whole batch, naming `ops[i]` (message prefix and `op` detail).
    Holds one decoder per op model, made once per route."""

    def __init__(self) -> None:
        self.shape = msgspec.json.Decoder(BatchShape)
        self.head = msgspec.json.Decoder(m.OpHead)
        self.ops = {name: msgspec.json.Decoder(cls) for name, cls in m.BATCH_OPS.items()}

    def __call__(self, raw: bytes) -> list[model.BatchOp]:
        body: BatchShape = contract.decode(BatchShape, raw, self.shape)
        if not 1 <= len(body.ops) <= m.BATCH_MAX_OPS:
            raise BadRequestError(
                f"'ops' holds {len(body.ops)} ops; 1 to {m.BATCH_MAX_OPS} are allowed"
            )
        labels: set[str] = set()
        out: list[model.BatchOp] = []
        for index, op_raw in enumerate(body.ops):
            try:
                out.append(self.op(bytes(op_raw), labels))
            except BadRequestError as exc:
                # Same class (so the same code: invalid_name, bad_block_id, ...), prefixed.
                raise type(exc)(f"ops[{index}]: {exc.message}", op=index, **exc.details) from None
        return out

    def op(self, raw: bytes, labels: set[str]) -> model.BatchOp:
        """One op; `labels` holds the labels defined by earlier ops (updated here)."""
        kind = contract.decode(m.OpHead, raw, self.head, subject="").op
        cls = m.BATCH_OPS.get(kind)
        if cls is None:
            raise BadRequestError(
                f"'op' is {kind[:40]!r}; one of create, commit, setattr, move, delete"
            )
        wire = contract.decode(cls, raw, self.ops[kind], subject="")

        def ref(value: int | str, key: str) -> model.NodeRef:
            if isinstance(value, str) and value not in labels:
                raise BadRequestError(
                    f"'{key}' names label {value!r}, not defined by an earlier op"
                )
            return value

        if isinstance(wire, m.CreateOp):
            op: model.BatchOp = model.CreateOp(
                ref(wire.parent, "parent"),
                wire.name,
                wire.kind,
                wire.mode,
                wire.mtime_ns,
                wire.atime_ns,
                None if wire.target is msgspec.UNSET else wire.target,
                0 if wire.size is msgspec.UNSET else wire.size,
                [] if wire.blocks is msgspec.UNSET else wire.blocks,
                wire.label,
            )
            if wire.label is not None:
                if wire.label in labels:
                    raise BadRequestError(f"label {wire.label!r} is defined twice")
                labels.add(wire.label)
        elif isinstance(wire, m.CommitOp):
            op = model.CommitOp(
                ref(wire.node, "node"), wire.base_version, wire.size, wire.blocks, wire.mtime_ns
            )
        elif isinstance(wire, m.SetattrOp):
            op = model.SetattrOp(ref(wire.node, "node"), wire.mode, wire.mtime_ns, wire.atime_ns)
        elif isinstance(wire, m.MoveOp):
            node = ref(wire.node, "node")
            op = model.MoveOp(node, ref(wire.parent, "parent"), wire.name, wire.replace)
        else:
            assert isinstance(wire, m.DeleteOp)
            op = model.DeleteOp(ref(wire.node, "node"))
        return op


def outcome(result: model.BatchResult) -> dict[str, Any]:
    """One result on the wire (models.BatchOutcome; a dict because error details vary)."""
    if result.error is not None:
        return {"ok": False, "status": result.error.status, **result.error.body()}
    if result.op == "delete":
        return {"ok": True, "trashed": result.trashed}
    assert result.node is not None
    out: dict[str, Any] = {"ok": True, "node": m.node_out(result.node)}
    if result.op == "move":
        out["replaced"] = result.replaced
    return out


async def batch(request: web.Request, ops: list[model.BatchOp]) -> web.Response:
    results = await request.app[META].apply_batch(
        current_user(request).user_id, ops, device_of(request)
    )
    if any(r.error is None for r in results):
        await notify(request)  # once, after the batch's one commit
    body = msgspec.json.encode({"results": [outcome(r) for r in results]})
    return web.Response(body=body, content_type=contract.JSON)


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
    return contract.answer(
        m.PackStored(
            [m.BlockStored(s.block_id, s.size, n) for s, n in zip(staged, new, strict=True)]
        )
    )


ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/batch",
        batch,
        "batch",
        f"apply 1..{m.BATCH_MAX_OPS} namespace ops in order, each atomic, in one transaction",
        {200: ("one result per op, in order", m.BatchResults)},
        {400: f"{NAME_ERRORS}, bad_block_id (body has `op`: the index)", 413: "too_large"},
        (DEVICE,),
        body=m.BatchRequest,
        parse=BatchParser(),
    ),
    Route(
        "POST",
        "/v1/blocks/pack",
        put_pack,
        "put_pack",
        f"upload up to {PACK_MAX_RECORDS} blocks in one body of records [32-byte BLAKE3 digest]"
        f"[u32 big-endian length][bytes], <= 16 MiB (each stored as PUT /v1/blocks/{{id}} does)",
        {200: ("the blocks in record order; stored = new for this user", m.PackStored)},
        {400: "bad_request, hash_mismatch", 413: "too_large"},
        raw_body=True,
        raw_type=PACK_TYPE,
    ),
]


def setup(app: web.Application) -> None:
    contract.register(app, ROUTES)
