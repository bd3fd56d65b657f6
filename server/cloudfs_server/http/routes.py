"""HTTP routes of API v1: parse the request, call a store, answer. No storage logic here.

Every route is registered in `setup()` with a name; `openapi.py` documents each name, and a test
checks the two lists agree.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from typing import Any

from aiohttp import hdrs, web

from cloudfs_server.errors import (
    BadRequestError,
    NotFoundError,
    RangeNotSatisfiableError,
    TooLargeError,
)
from cloudfs_server.http import openapi
from cloudfs_server.http.state import BLOCKS, CONFIG, GC_LOCK, META, NOTIFIER, current_user
from cloudfs_server.model import (
    INT64_MAX,
    KINDS,
    NAME_MAX_BYTES,
    CommitOp,
    CreateOp,
    MoveOp,
    NodeRef,
    SetattrOp,
    validate_block_id,
    validate_block_list,
    validate_device,
    validate_int,
    validate_name,
)

MISSING_MAX_IDS = 10_000
CHILDREN_DEFAULT, CHILDREN_MAX = 1000, 5000
CHANGES_DEFAULT, CHANGES_MAX = 1000, 10_000
WAIT_MAX_S = 60.0
TARGET_MAX_BYTES = 4095
INT64_MIN = -(2**63)
OCTET = "application/octet-stream"
# JSON bodies and block lists bigger than these are parsed/validated/serialised in a worker
# thread: a 50 GB file's block list (~50,000 entries, ~4 MB) would block the loop for tens of ms.
BIG_JSON_BYTES = 256 * 1024
BIG_BLOCK_LIST = 2000


async def offload(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None


async def json_answer(obj: Any, big: bool = False, status: int = 200) -> web.Response:
    """A JSON response; `big` bodies are serialised in a worker thread."""
    if not big:
        return web.json_response(obj, status=status)
    text = await offload(json.dumps, obj)
    return web.Response(text=text, status=status, content_type="application/json")


# ---- parsing helpers ---------------------------------------------------------------------
async def json_body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object. Raises: BadRequestError, aiohttp 413 over client_max_size."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise BadRequestError("request body must be a JSON object")
    value = await offload(_parse_json, raw) if len(raw) > BIG_JSON_BYTES else _parse_json(raw)
    if not isinstance(value, dict):
        raise BadRequestError("request body must be a JSON object")
    return value


def node_id_of(request: web.Request, key: str = "node_id") -> int:
    value = int(request.match_info[key])  # the route pattern guarantees digits
    if value < 1 or value > INT64_MAX:
        raise NotFoundError(f"node {value} not found")
    return value


def query_int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"query parameter '{key}' must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequestError(f"query parameter '{key}' must be between {lo} and {hi}")
    return value


def optional_int(body: dict[str, Any], key: str, minimum: int = 0) -> int | None:
    if body.get(key) is None:
        return None
    return validate_int(body[key], key, minimum)


def require(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise BadRequestError(f"missing field '{key}'")
    return body[key]


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(map(repr, unknown))}")


def node_ref(value: object, field_name: str, labels: bool) -> NodeRef:
    """A node id (int >= 1) or, where `labels` (batch ops), a label string."""
    if labels and isinstance(value, str):
        if not value or len(value.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
            raise BadRequestError(f"label '{field_name}' must be 1..{NAME_MAX_BYTES} bytes")
        return value
    if labels and (not isinstance(value, int) or isinstance(value, bool)):
        raise BadRequestError(f"'{field_name}' must be a node id or the label of an earlier create")
    return validate_int(value, field_name, minimum=1)


# The single routes and the batch ops parse their fields with these, so they cannot drift.
CREATE_FIELDS = {"name", "type", "mode", "mtime_ns", "atime_ns", "target", "size", "blocks"}
COMMIT_FIELDS = {"base_version", "size", "blocks", "mtime_ns"}
SETATTR_FIELDS = {"mode", "mtime_ns", "atime_ns"}
MOVE_FIELDS = {"parent", "name", "replace"}


def parse_create(body: dict[str, Any], parent: NodeRef, label: str | None = None) -> CreateOp:
    name = validate_name(require(body, "name"))
    kind = require(body, "type")
    if kind not in KINDS:
        raise BadRequestError("'type' must be one of 'dir', 'file', 'symlink'")
    mode = optional_int(body, "mode")
    mtime_ns = optional_int(body, "mtime_ns", INT64_MIN)
    atime_ns = optional_int(body, "atime_ns", INT64_MIN)
    target = None
    if kind == "symlink":
        target = require(body, "target")
        if not isinstance(target, str) or not target:
            raise BadRequestError("'target' must be a non-empty string")
        try:
            raw = target.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError("'target' is not valid UTF-8") from None
        if len(raw) > TARGET_MAX_BYTES or "\x00" in target:
            raise BadRequestError(f"'target' must be at most {TARGET_MAX_BYTES} bytes, no NUL")
    elif "target" in body:
        raise BadRequestError("'target' is only for symlinks")
    if kind == "file":
        blocks, size = validate_block_list(body.get("blocks", []), body.get("size", 0))
    elif "blocks" in body or body.get("size"):
        raise BadRequestError("'size' and 'blocks' are only for files")
    else:
        blocks, size = [], 0
    return CreateOp(parent, name, kind, mode, mtime_ns, atime_ns, target, size, blocks, label)


def parse_commit(body: dict[str, Any], node: NodeRef) -> CommitOp:
    base_version = validate_int(require(body, "base_version"), "base_version")
    blocks, size = validate_block_list(require(body, "blocks"), require(body, "size"))
    return CommitOp(node, base_version, size, blocks, optional_int(body, "mtime_ns", INT64_MIN))


def parse_setattr(body: dict[str, Any], node: NodeRef) -> SetattrOp:
    if "size" in body:
        raise BadRequestError("'size' cannot be patched; a size change is a content commit")
    return SetattrOp(
        node,
        optional_int(body, "mode"),
        optional_int(body, "mtime_ns", INT64_MIN),
        optional_int(body, "atime_ns", INT64_MIN),
    )


def parse_move(body: dict[str, Any], node: NodeRef, labels: bool = False) -> MoveOp:
    parent = node_ref(require(body, "parent"), "parent", labels)
    name = validate_name(require(body, "name"))
    replace = body.get("replace", False)
    if not isinstance(replace, bool):
        raise BadRequestError("'replace' must be true or false")
    return MoveOp(node, parent, name, replace)


def big_blocks(body: dict[str, Any]) -> bool:
    """The body's block list is big enough to validate in a worker thread."""
    blocks = body.get("blocks")
    return isinstance(blocks, list) and len(blocks) > BIG_BLOCK_LIST


def device_of(request: web.Request) -> str:
    return validate_device(request.headers.get("X-Cloudfs-Device"))


async def notify(request: web.Request) -> None:
    await request.app[NOTIFIER].notify(current_user(request).user_id)


# ---- service -----------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def me(request: web.Request) -> web.Response:
    user = current_user(request)
    return web.json_response(
        {
            "user": user.name,
            "user_id": user.user_id,
            "root": user.root,
            "quota_bytes": user.quota_bytes,
        }
    )


async def usage(request: web.Request) -> web.Response:
    result = await request.app[META].usage(current_user(request).user_id)
    return web.json_response(result.to_json())


# ---- blocks ------------------------------------------------------------------------------
async def put_block(request: web.Request) -> web.Response:
    user = current_user(request)
    block_id = validate_block_id(request.match_info["block_id"])
    limit = request.app[CONFIG].block_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"block bodies are limited to {limit} bytes")
    blocks = request.app[BLOCKS]
    meta = request.app[META]
    known = await meta.available_block_size(user.user_id, block_id) is not None
    staged = await blocks.stage(block_id, request.content.iter_any(), limit, known)
    try:
        async with request.app[GC_LOCK].shared():
            await blocks.publish(staged)
            new = await meta.record_upload(user.user_id, block_id, staged.size)
    finally:
        await blocks.discard(staged)
    return web.json_response(
        {"block_id": block_id, "size": staged.size, "stored": new}, status=201 if new else 200
    )


async def get_block(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    block_id = validate_block_id(request.match_info["block_id"])
    size = await request.app[META].available_block_size(user.user_id, block_id)
    if size is None:
        raise NotFoundError(f"block {block_id} not found")
    # Validate Range here so that every refusal is our JSON 416 (FileResponse answers its own).
    try:
        rng = request.http_range
    except ValueError:
        raise RangeNotSatisfiableError(
            "Range must be one 'bytes=a-b', 'bytes=a-' or 'bytes=-n' range", size=size
        ) from None
    # No Range header is slice(None, None, 1) (not slice(None)) in aiohttp: ask the header.
    ranged = hdrs.RANGE in request.headers
    if ranged:
        start, stop, _ = rng.indices(size)
        if stop <= start:
            raise RangeNotSatisfiableError(
                f"Range {request.headers.get(hdrs.RANGE)!r} is outside the {size}-byte block",
                size=size,
            )
    blocks = request.app[BLOCKS]
    path = await blocks.local_path(block_id)
    if path is not None:
        # sendfile(2), Range → 206, If-None-Match; block files never change.
        return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: OCTET})
    start, stop, _ = rng.indices(size) if ranged else (0, size, 1)
    data = await blocks.read(block_id, start, max(0, stop - start))
    status = 206 if ranged else 200
    headers = {hdrs.CONTENT_TYPE: OCTET, hdrs.ACCEPT_RANGES: "bytes"}
    if status == 206:
        headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{stop - 1}/{size}"
    return web.Response(body=data, status=status, headers=headers)


async def head_block(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    block_id = validate_block_id(request.match_info["block_id"])
    size = await request.app[META].available_block_size(user.user_id, block_id)
    if size is None:
        raise NotFoundError(f"block {block_id} not found")
    resp = web.StreamResponse(status=200, headers={hdrs.CONTENT_TYPE: OCTET})
    resp.content_length = size
    await resp.prepare(request)  # HEAD: headers only
    await resp.write_eof()
    return resp


async def missing_blocks(request: web.Request) -> web.Response:
    body = await json_body(request)
    ids = require(body, "block_ids")
    if not isinstance(ids, list):
        raise BadRequestError("'block_ids' must be a list")
    if len(ids) > MISSING_MAX_IDS:
        raise BadRequestError(f"'block_ids' holds {len(ids)} ids; at most {MISSING_MAX_IDS}")
    checked = [validate_block_id(b) for b in ids]
    missing = await request.app[META].missing_blocks(current_user(request).user_id, checked)
    return web.json_response({"missing": missing})


# ---- namespace ---------------------------------------------------------------------------
async def get_node(request: web.Request) -> web.Response:
    with_blocks = request.query.get("blocks", "") in ("1", "true")
    node = await request.app[META].get_node(
        current_user(request).user_id, node_id_of(request), with_blocks
    )
    big = node.blocks is not None and len(node.blocks) > BIG_BLOCK_LIST
    return await json_answer(await offload(node.to_json) if big else node.to_json(), big)


async def list_children(request: web.Request) -> web.Response:
    after = request.query.get("after") or None
    limit = query_int(request, "limit", CHILDREN_DEFAULT, 1, CHILDREN_MAX)
    nodes, next_after = await request.app[META].list_children(
        current_user(request).user_id, node_id_of(request), after, limit
    )
    return web.json_response({"entries": [n.to_json() for n in nodes], "next": next_after})


async def lookup(request: web.Request) -> web.Response:
    if "name" not in request.query:
        raise BadRequestError("missing query parameter 'name'")
    name = validate_name(request.query["name"])
    node = await request.app[META].lookup(current_user(request).user_id, node_id_of(request), name)
    return web.json_response(node.to_json())


async def create_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, CREATE_FIELDS)
    parent = node_id_of(request)
    op: CreateOp = (
        await offload(parse_create, body, parent)
        if big_blocks(body)
        else parse_create(body, parent)
    )
    node = await request.app[META].create_node(
        current_user(request).user_id,
        parent,
        op.name,
        op.kind,
        op.mode,
        op.mtime_ns,
        op.target,
        op.size,
        op.blocks,
        device_of(request),
        op.atime_ns,
    )
    await notify(request)
    return web.json_response(node.to_json(), status=201)


async def commit(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, COMMIT_FIELDS)
    node_id = node_id_of(request)
    op: CommitOp = (
        await offload(parse_commit, body, node_id)
        if big_blocks(body)
        else parse_commit(body, node_id)
    )
    node = await request.app[META].commit(
        current_user(request).user_id,
        node_id,
        op.base_version,
        op.size,
        op.blocks,
        op.mtime_ns,
        device_of(request),
    )
    await notify(request)
    return web.json_response(node.to_json())


async def patch_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    node_id = node_id_of(request)
    reject_unknown(body, SETATTR_FIELDS | {"size"})  # 'size' gets its own message
    op = parse_setattr(body, node_id)
    node = await request.app[META].setattr(
        current_user(request).user_id,
        node_id,
        op.mode,
        op.mtime_ns,
        device_of(request),
        op.atime_ns,
    )
    await notify(request)
    return web.json_response(node.to_json())


async def move_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, MOVE_FIELDS)
    op = parse_move(body, node_id_of(request))
    assert isinstance(op.node, int) and isinstance(op.parent, int)  # no labels outside batches
    node, replaced = await request.app[META].move(
        current_user(request).user_id,
        op.node,
        op.parent,
        op.name,
        op.replace,
        device_of(request),
    )
    await notify(request)
    return web.json_response({"node": node.to_json(), "replaced": replaced})


async def delete_node(request: web.Request) -> web.Response:
    trashed = await request.app[META].delete(
        current_user(request).user_id, node_id_of(request), device_of(request)
    )
    await notify(request)
    return web.json_response({"trashed": trashed})


# ---- history and trash -------------------------------------------------------------------
def version_of(request: web.Request) -> int:
    value = int(request.match_info["version"])
    if value < 1 or value > INT64_MAX:
        raise NotFoundError(f"no version {value}")
    return value


async def list_versions(request: web.Request) -> web.Response:
    versions = await request.app[META].list_versions(
        current_user(request).user_id, node_id_of(request)
    )
    return web.json_response({"versions": [v.to_json() for v in versions]})


async def get_version(request: web.Request) -> web.Response:
    version = await request.app[META].get_version(
        current_user(request).user_id, node_id_of(request), version_of(request)
    )
    big = version.blocks is not None and len(version.blocks) > BIG_BLOCK_LIST
    return await json_answer(await offload(version.to_json) if big else version.to_json(), big)


async def restore_version(request: web.Request) -> web.Response:
    node = await request.app[META].restore_version(
        current_user(request).user_id,
        node_id_of(request),
        version_of(request),
        device_of(request),
    )
    await notify(request)
    return web.json_response(node.to_json())


async def list_trash(request: web.Request) -> web.Response:
    nodes = await request.app[META].list_trash(current_user(request).user_id)
    return web.json_response({"entries": [n.to_json() for n in nodes]})


async def restore_trash(request: web.Request) -> web.Response:
    body = await json_body(request, optional=True)
    reject_unknown(body, {"parent", "name"})
    parent = optional_int(body, "parent", 1)
    name = None if body.get("name") is None else validate_name(body["name"])
    node = await request.app[META].restore_trash(
        current_user(request).user_id, node_id_of(request), parent, name, device_of(request)
    )
    await notify(request)
    return web.json_response(node.to_json())


# ---- change log --------------------------------------------------------------------------
async def changes(request: web.Request) -> web.Response:
    user = current_user(request)
    raw_cursor = request.query.get("cursor", "0")
    cursor = None if raw_cursor == "latest" else query_int(request, "cursor", 0, 0, INT64_MAX)
    limit = query_int(request, "limit", CHANGES_DEFAULT, 1, CHANGES_MAX)
    try:
        wait_s = float(request.query.get("wait", "0") or 0)
    except ValueError:
        raise BadRequestError("query parameter 'wait' must be a number of seconds") from None
    if not 0 <= wait_s <= WAIT_MAX_S:
        raise BadRequestError(f"query parameter 'wait' must be between 0 and {WAIT_MAX_S:g}")
    notifier = request.app[NOTIFIER]
    meta = request.app[META]
    seen = notifier.generation(user.user_id)
    page = await meta.changes(user.user_id, cursor, limit)
    busy_s = None
    if cursor is not None and not page.changes and wait_s > 0:
        if notifier.busy:  # do not hold another request: suggest a back-off with jitter
            busy_s = round(request.app[CONFIG].busy_retry_s * random.uniform(0.5, 1.0), 3)
        else:
            await notifier.wait(user.user_id, seen, wait_s)
            page = await meta.changes(user.user_id, cursor, limit)
    body: dict[str, Any] = {
        "changes": [c.to_json() for c in page.changes],
        "cursor": page.cursor,
        "more": page.more,
    }
    if busy_s is not None:
        body["retry_after_s"] = busy_s
    return web.json_response(body)


NODE = r"/v1/nodes/{node_id:\d+}"
BLOCK = "/v1/blocks/{block_id}"

# (method, path, handler, name) — the name keys the OpenAPI operation (operationId).
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/healthz", healthz, "healthz"),
    ("GET", "/v1/openapi.json", openapi_doc, "openapi"),
    ("GET", "/v1/me", me, "me"),
    ("GET", "/v1/usage", usage, "usage"),
    ("POST", "/v1/blocks/missing", missing_blocks, "missing_blocks"),
    ("PUT", BLOCK, put_block, "put_block"),
    ("GET", BLOCK, get_block, "get_block"),
    ("HEAD", BLOCK, head_block, "head_block"),
    ("GET", NODE, get_node, "get_node"),
    ("PATCH", NODE, patch_node, "patch_node"),
    ("DELETE", NODE, delete_node, "delete_node"),
    ("GET", NODE + "/children", list_children, "list_children"),
    ("POST", NODE + "/children", create_node, "create_node"),
    ("GET", NODE + "/lookup", lookup, "lookup"),
    ("PUT", NODE + "/content", commit, "commit"),
    ("POST", NODE + "/move", move_node, "move_node"),
    ("GET", NODE + "/versions", list_versions, "list_versions"),
    ("GET", NODE + r"/versions/{version:\d+}", get_version, "get_version"),
    ("POST", NODE + r"/versions/{version:\d+}/restore", restore_version, "restore_version"),
    ("GET", "/v1/trash", list_trash, "list_trash"),
    ("POST", r"/v1/trash/{node_id:\d+}/restore", restore_trash, "restore_trash"),
    ("GET", "/v1/changes", changes, "changes"),
]


def setup(app: web.Application) -> None:
    for method, path, handler, name in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler, name=name, allow_head=False)
        else:
            app.router.add_route(method, path, handler, name=name)
