"""HTTP routes of API v1: parse the request, call a store, answer. No storage logic here.

`ROUTES` is the table: each `contract.Route` names its handler, request and answer models, error
statuses and parameters; `setup()` registers it and /v1/openapi.json is generated from it.
"""

from __future__ import annotations

import random
import re

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from msgspec import UNSET
from multidict import CIMultiDict

from cloudfs_server.errors import (
    BadRequestError,
    NotFoundError,
    RangeNotSatisfiableError,
    TooLargeError,
)
from cloudfs_server.http import contract
from cloudfs_server.http import models as m
from cloudfs_server.http.contract import OCTET, Link, Param, Route, answer
from cloudfs_server.http.state import BLOCKS, CONFIG, GC_LOCK, META, NOTIFIER, current_user
from cloudfs_server.model import INT64_MAX, validate_block_id, validate_device, validate_name

CHILDREN_DEFAULT, CHILDREN_MAX = 1000, 5000
CHANGES_DEFAULT, CHANGES_MAX = 1000, 10_000
WAIT_MAX_S = 60.0
# Request headers FileResponse would answer from the block file's mtime: a shared file's time
# says when *someone* stored the block, so they never reach it (we answer If-None-Match).
FILE_CONDITIONALS = (
    hdrs.IF_MATCH,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
    hdrs.IF_RANGE,
)
SUFFIX_RANGE_RE = re.compile(r"bytes=-(\d+)")
FLAG_VALUES = ("", "0", "1", "true", "false")


# ---- parsing helpers ---------------------------------------------------------------------
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


def device_of(request: web.Request) -> str:
    return validate_device(request.headers.get("X-Cloudfs-Device"))


async def notify(request: web.Request) -> None:
    await request.app[NOTIFIER].notify(current_user(request).user_id)


# ---- service -----------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    return answer(m.Health(ok=True))


async def openapi_doc(request: web.Request) -> web.Response:
    return web.Response(body=request.app[contract.OPENAPI_DOC], content_type=contract.JSON)


async def me(request: web.Request) -> web.Response:
    user = current_user(request)
    return answer(m.Me(user.name, user.user_id, user.root, user.quota_bytes))


async def usage(request: web.Request) -> web.Response:
    result = await request.app[META].usage(current_user(request).user_id)
    return answer(m.usage_out(result))


# ---- blocks ------------------------------------------------------------------------------
class BlockFileResponse(web.FileResponse):
    """A block file sent with sendfile(2), prepared for `stripped` (the request without the
    headers FileResponse would answer from the file); `neutral_validators` sets its ETag."""

    def __init__(self, path: str, block_id: str, stripped: web.BaseRequest) -> None:
        super().__init__(path, headers={hdrs.CONTENT_TYPE: OCTET})
        self.block_id = block_id
        self.stripped = stripped

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return await super().prepare(self.stripped)


async def neutral_validators(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a block file's ETag and Last-Modified come from the shared file
    (when someone stored it); replace them with the block id and nothing."""
    if isinstance(response, BlockFileResponse):
        response.headers[hdrs.ETAG] = f'"{response.block_id}"'
        response.headers.popall(hdrs.LAST_MODIFIED, None)


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


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
    return answer(m.BlockStored(block_id, staged.size, new), status=201 if new else 200)


async def get_block(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    block_id = validate_block_id(request.match_info["block_id"])
    size = await request.app[META].available_block_size(user.user_id, block_id)
    if size is None:
        raise NotFoundError(f"block {block_id} not found")
    etag = f'"{block_id}"'
    if_none_match = request.headers.get(hdrs.IF_NONE_MATCH)
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers={hdrs.ETAG: etag})
    if_range = request.headers.get(hdrs.IF_RANGE)
    use_range = if_range is None or if_range.strip() == etag
    # Validate Range here so that every refusal is our JSON 416 (FileResponse answers its own).
    raw_range = request.headers.get(hdrs.RANGE) if use_range else None
    rng = slice(None)
    if raw_range is not None:
        try:
            rng = request.http_range
        except ValueError:
            raise RangeNotSatisfiableError(
                "Range must be one 'bytes=a-b', 'bytes=a-' or 'bytes=-n' range", size=size
            ) from None
        suffix = SUFFIX_RANGE_RE.fullmatch(raw_range.strip())
        if suffix and int(suffix[1]) == 0:
            raise RangeNotSatisfiableError("Range 'bytes=-0' asks for no bytes", size=size)
    # Ask whether a Range is in force, never compare rng with slice(None): aiohttp's answer for
    # no Range header is slice(None, None, 1), which is not slice(None).
    ranged = raw_range is not None
    if ranged:
        start, stop, _ = rng.indices(size)
        if stop <= start:
            raise RangeNotSatisfiableError(
                f"Range {raw_range!r} is outside the {size}-byte block", size=size
            )
    blocks = request.app[BLOCKS]
    # Over TLS sendfile(2) cannot be used and asyncio's fallback copies in 256 KiB steps (27 vs
    # 80 MB/s here for 1 MiB blocks): send the block from memory instead (at most 16 MiB).
    path = None if request.secure else await blocks.local_path(block_id)
    if path is not None:
        # sendfile(2) and Range → 206; the file's own validators never reach it (see
        # FILE_CONDITIONALS): it is prepared with a request stripped of them.
        stripped = CIMultiDict(request.headers)
        for name in FILE_CONDITIONALS:
            stripped.popall(name, None)
        if not use_range:
            stripped.popall(hdrs.RANGE, None)
        return BlockFileResponse(str(path), block_id, request.clone(headers=stripped))
    # No local file (S3, a layered store): read the bytes asked for.
    start, stop, _ = rng.indices(size) if ranged else (0, size, 1)
    data = await blocks.read(block_id, start, max(0, stop - start))
    status = 206 if ranged else 200
    headers = {hdrs.CONTENT_TYPE: OCTET, hdrs.ACCEPT_RANGES: "bytes", hdrs.ETAG: etag}
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


async def missing_blocks(request: web.Request, body: m.MissingBlocksRequest) -> web.Response:
    missing = await request.app[META].missing_blocks(current_user(request).user_id, body.block_ids)
    return answer(m.Missing(missing))


# ---- namespace ---------------------------------------------------------------------------
def query_flag(request: web.Request, key: str) -> bool:
    values = request.query.getall(key, [])
    if len(values) > 1:
        raise BadRequestError(f"query parameter '{key}' is given {len(values)} times")
    raw = values[0] if values else ""
    if raw not in FLAG_VALUES:
        raise BadRequestError(f"query parameter '{key}' must be one of 1, true, 0, false")
    return raw in ("1", "true")


async def get_node(request: web.Request) -> web.Response:
    with_blocks = query_flag(request, "blocks")
    node = await request.app[META].get_node(
        current_user(request).user_id, node_id_of(request), with_blocks
    )
    return answer(m.node_out(node))  # 50,000 blocks encode in ~3 ms: no worker thread


async def list_children(request: web.Request) -> web.Response:
    after = request.query.get("after") or None
    if after is not None and "\x00" in after:  # PostgreSQL text cannot hold one; no name has one
        raise BadRequestError("query parameter 'after' must not contain NUL (no name does)")
    limit = query_int(request, "limit", CHILDREN_DEFAULT, 1, CHILDREN_MAX)
    nodes, next_after = await request.app[META].list_children(
        current_user(request).user_id, node_id_of(request), after, limit
    )
    return answer(m.Children([m.node_out(n) for n in nodes], next_after))


async def lookup(request: web.Request) -> web.Response:
    if "name" not in request.query:
        raise BadRequestError("missing query parameter 'name'")
    name = validate_name(request.query["name"])
    node = await request.app[META].lookup(current_user(request).user_id, node_id_of(request), name)
    return answer(m.node_out(node))


async def create_node(request: web.Request, body: m.CreateNodeRequest) -> web.Response:
    blocks = [] if body.blocks is UNSET else body.blocks
    size = 0 if body.size is UNSET else body.size
    node = await request.app[META].create_node(
        current_user(request).user_id,
        node_id_of(request),
        body.name,
        body.kind,
        body.mode,
        body.mtime_ns,
        None if body.target is UNSET else body.target,
        size,
        blocks,
        device_of(request),
        body.atime_ns,
    )
    await notify(request)
    return answer(m.node_out(node), status=201)


async def commit(request: web.Request, body: m.CommitRequest) -> web.Response:
    node = await request.app[META].commit(
        current_user(request).user_id,
        node_id_of(request),
        body.base_version,
        body.size,
        body.blocks,
        body.mtime_ns,
        device_of(request),
    )
    await notify(request)
    return answer(m.node_out(node))


async def patch_node(request: web.Request, body: m.PatchNodeRequest) -> web.Response:
    node = await request.app[META].setattr(
        current_user(request).user_id,
        node_id_of(request),
        body.mode,
        body.mtime_ns,
        device_of(request),
        body.atime_ns,
    )
    await notify(request)
    return answer(m.node_out(node))


async def move_node(request: web.Request, body: m.MoveRequest) -> web.Response:
    node, replaced = await request.app[META].move(
        current_user(request).user_id,
        node_id_of(request),
        body.parent,
        body.name,
        body.replace,
        device_of(request),
    )
    await notify(request)
    return answer(m.Moved(m.node_out(node), replaced))


async def delete_node(request: web.Request) -> web.Response:
    trashed = await request.app[META].delete(
        current_user(request).user_id, node_id_of(request), device_of(request)
    )
    await notify(request)
    return answer(m.Deleted(trashed))


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
    return answer(m.Versions([m.version_out(v) for v in versions]))


async def get_version(request: web.Request) -> web.Response:
    version = await request.app[META].get_version(
        current_user(request).user_id, node_id_of(request), version_of(request)
    )
    return answer(m.version_out(version))


async def restore_version(request: web.Request) -> web.Response:
    node = await request.app[META].restore_version(
        current_user(request).user_id,
        node_id_of(request),
        version_of(request),
        device_of(request),
    )
    await notify(request)
    return answer(m.node_out(node))


async def list_trash(request: web.Request) -> web.Response:
    nodes = await request.app[META].list_trash(current_user(request).user_id)
    return answer(m.Trash([m.node_out(n) for n in nodes]))


async def restore_trash(request: web.Request, body: m.RestoreTrashRequest) -> web.Response:
    node = await request.app[META].restore_trash(
        current_user(request).user_id,
        node_id_of(request),
        body.parent,
        body.name,
        device_of(request),
    )
    await notify(request)
    return answer(m.node_out(node))


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
    if not 0 <= wait_s <= WAIT_MAX_S:  # also refuses nan
        raise BadRequestError(f"query parameter 'wait' must be between 0 and {WAIT_MAX_S:g}")
    notifier = request.app[NOTIFIER]
    meta = request.app[META]
    seen = notifier.generation(user.user_id)
    page = await meta.changes(user.user_id, cursor, limit)
    busy_s = None
    if cursor is not None and not page.changes and wait_s > 0:
        if notifier.busy(user.user_id):  # hold no more: suggest a back-off with jitter
            busy_s = round(request.app[CONFIG].busy_retry_s * random.uniform(0.5, 1.0), 3)
        else:
            await notifier.wait(user.user_id, seen, wait_s)
            page = await meta.changes(user.user_id, cursor, limit)
    return answer(m.changes_out(page, busy_s))


# ---- the table -------------------------------------------------------------------------------
NODE = r"/v1/nodes/{node_id:\d+}"
# Not the fixed paths under /v1/blocks/ (POST only): their other methods answer 405, not a
# bad_block_id for the name.
BLOCK = r"/v1/blocks/{block_id:(?!(?:missing|pack)$)[^/]+}"
NODE_ID = Param(
    "node_id", "path", {"type": "integer", "minimum": 1}, "node id (another user's: 404)"
)
VERSION = Param("version", "path", {"type": "integer", "minimum": 1}, "version number")
BLOCK_ID = Param(
    "block_id", "path", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "BLAKE3 of the bytes"
)
DEVICE = Param(
    "X-Cloudfs-Device",
    "header",
    {"type": "string", "maxLength": 255, "default": "api"},
    "device name recorded as committed_by / device (<= 255 UTF-8 bytes)",
    error=(400, "bad_request (X-Cloudfs-Device over 255 bytes)"),
)
NODE_ERRORS = {404: "not_found"}
BAD = "bad_request"
NAME_ERRORS = "bad_request, invalid_name, name_too_long"
# After a node is created, its other operations may follow (OpenAPI links: stateful testing).
NODE_OPS = (
    *("get_node", "list_children", "lookup", "list_versions", "patch_node", "move_node"),
    *("delete_node", "create_node", "commit"),
)


def _links(status: int, source: str) -> tuple[Link, ...]:
    return tuple(Link(status, op, {"node_id": source}) for op in NODE_OPS) + tuple(
        Link(status, op, {"node_id": source, "version": "$response.body#/version"})
        for op in ("get_version", "restore_version")
    )


BLOCK_LINKS = tuple(
    Link(status, op, {"block_id": "$response.body#/block_id"}, name=f"{op}_{status}")
    for status in (200, 201)
    for op in ("get_block", "head_block", "holders_of_block")
)


ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, "healthz", "liveness", {200: ("ok", m.Health)}, auth=False),
    Route(
        "GET",
        "/v1/openapi.json",
        openapi_doc,
        "openapi",
        "this document",
        {200: ("the document", None)},
    ),
    Route("GET", "/v1/me", me, "me", "the token's user", {200: ("the user", m.Me)}),
    Route("GET", "/v1/usage", usage, "usage", "the user's usage", {200: ("usage", m.UsageOut)}),
    Route(
        "POST",
        "/v1/blocks/missing",
        missing_blocks,
        "missing_blocks",
        "which of these blocks are not available to the user (at most 10,000 ids)",
        {200: ("the missing ids, in request order", m.Missing)},
        {400: "bad_request, bad_block_id", 413: "too_large"},
        body=m.MissingBlocksRequest,
    ),
    Route(
        "PUT",
        BLOCK,
        put_block,
        "put_block",
        "upload a block; the server rehashes it",
        {201: ("stored now", m.BlockStored), 200: ("was already stored", m.BlockStored)},
        {400: "bad_block_id, hash_mismatch", 413: "too_large"},
        (BLOCK_ID,),
        raw_body=True,
        links=BLOCK_LINKS,
    ),
    Route(
        "GET",
        BLOCK,
        get_block,
        "get_block",
        "a block's bytes; one Range (bytes=a-b, a-, -n) gives 206; ETag is the quoted block id",
        {
            200: ("the bytes", bytes),
            206: ("the range", bytes),
            304: ("If-None-Match matched the block id", None),
        },
        {400: "bad_block_id", 404: "not_found", 416: "range_not_satisfiable"},
        (BLOCK_ID, Param("Range", "header", {"type": "string"}, "one byte range")),
    ),
    Route(
        "HEAD",
        BLOCK,
        head_block,
        "head_block",
        "whether the block is available; Content-Length is its size",
        {200: ("available", None)},
        {400: "bad_block_id", 404: "not_found"},
        (BLOCK_ID,),
    ),
    Route(
        "GET",
        NODE,
        get_node,
        "get_node",
        "a node; ?blocks=1 adds a file's block list",
        {200: ("the node", m.Node)},
        {400: BAD, **NODE_ERRORS},
        (NODE_ID, Param("blocks", "query", {"enum": list(FLAG_VALUES)}, "1 or true: add blocks")),
    ),
    Route(
        "PATCH",
        NODE,
        patch_node,
        "patch_node",
        "set mode, mtime_ns and/or atime_ns (no new content version)",
        {200: ("the node", m.Node)},
        {400: BAD, **NODE_ERRORS},
        (NODE_ID, DEVICE),
        body=m.PatchNodeRequest,
    ),
    Route(
        "DELETE",
        NODE,
        delete_node,
        "delete_node",
        "files and symlinks go to the trash; empty directories are removed",
        {200: ("deleted", m.Deleted)},
        {**NODE_ERRORS, 409: "not_empty, invalid_move"},
        (NODE_ID, DEVICE),
        links=(Link(200, "restore_trash", {"node_id": "$request.path.node_id"}),),
    ),
    Route(
        "GET",
        NODE + "/children",
        list_children,
        "list_children",
        "a directory's entries by UTF-8 bytes of the name, in pages",
        {200: ("a page; `next` is the `after` of the next page", m.Children)},
        {400: BAD, **NODE_ERRORS, 409: "not_a_directory"},
        (
            NODE_ID,
            Param("after", "query", {"type": "string"}, "the last name of the previous page"),
            Param(
                "limit",
                "query",
                {
                    "anyOf": [
                        {"type": "integer", "minimum": 1, "maximum": CHILDREN_MAX},
                        {"const": ""},
                    ]
                },
                f"page size (default, also when empty: {CHILDREN_DEFAULT})",
            ),
        ),
    ),
    Route(
        "POST",
        NODE + "/children",
        create_node,
        "create_node",
        "create a directory, file (with its block list) or symlink",
        {201: ("the new node", m.Node)},
        {
            400: f"{NAME_ERRORS}, bad_block_id",
            **NODE_ERRORS,
            409: "exists (body has `node`), not_a_directory, missing_blocks",
            413: "too_large",
            507: "quota_exceeded",
        },
        (NODE_ID, DEVICE),
        body=m.CreateNodeRequest,
        links=_links(201, "$response.body#/id"),
    ),
    Route(
        "GET",
        NODE + "/lookup",
        lookup,
        "lookup",
        "the child called `name`",
        {200: ("the child", m.Node)},
        {400: NAME_ERRORS, **NODE_ERRORS, 409: "not_a_directory"},
        (
            NODE_ID,
            Param(
                "name",
                "query",
                {"type": "string", "minLength": 1, "maxLength": 255},
                "the name",
                required=True,
            ),
        ),
    ),
    Route(
        "PUT",
        NODE + "/content",
        commit,
        "commit",
        "a new content version of a file, based on `base_version`",
        {200: ("the node at its new version", m.Node)},
        {
            400: "bad_request, bad_block_id",
            **NODE_ERRORS,
            409: "version_conflict, missing_blocks, is_a_directory",
            413: "too_large",
            507: "quota_exceeded",
        },
        (NODE_ID, DEVICE),
        body=m.CommitRequest,
    ),
    Route(
        "POST",
        NODE + "/move",
        move_node,
        "move_node",
        "rename and/or move; `replace` overwrites a file or empty directory at the target",
        {200: ("the moved node and the id it replaced", m.Moved)},
        {
            400: NAME_ERRORS,
            **NODE_ERRORS,
            409: "exists, not_empty, not_a_directory, is_a_directory, invalid_move",
        },
        (NODE_ID, DEVICE),
        body=m.MoveRequest,
    ),
    Route(
        "GET",
        NODE + "/versions",
        list_versions,
        "list_versions",
        "a file's versions, newest first",
        {200: ("versions", m.Versions)},
        {**NODE_ERRORS, 409: "is_a_directory"},
        (NODE_ID,),
    ),
    Route(
        "GET",
        NODE + r"/versions/{version:\d+}",
        get_version,
        "get_version",
        "one version with its block list",
        {200: ("the version", m.Version)},
        {**NODE_ERRORS, 409: "is_a_directory"},
        (NODE_ID, VERSION),
    ),
    Route(
        "POST",
        NODE + r"/versions/{version:\d+}/restore",
        restore_version,
        "restore_version",
        "a new version whose content is this version's",
        {200: ("the node at its new version", m.Node)},
        {**NODE_ERRORS, 409: "is_a_directory, missing_blocks", 507: "quota_exceeded"},
        (NODE_ID, VERSION, DEVICE),
    ),
    Route(
        "GET", "/v1/trash", list_trash, "list_trash", "trashed nodes", {200: ("the trash", m.Trash)}
    ),
    Route(
        "POST",
        r"/v1/trash/{node_id:\d+}/restore",
        restore_trash,
        "restore_trash",
        "put a trashed node back (default: where it was)",
        {200: ("the restored node", m.Node)},
        {400: NAME_ERRORS, **NODE_ERRORS, 409: "exists, not_a_directory", 507: "quota_exceeded"},
        (NODE_ID, DEVICE),
        body=m.RestoreTrashRequest,
        body_optional=True,
    ),
    Route(
        "GET",
        "/v1/changes",
        changes,
        "changes",
        "the user's change log after `cursor`; `wait` holds an empty answer up to S seconds",
        {200: ("a page of changes", m.Changes)},
        {400: BAD, 410: "cursor_expired"},
        (
            Param(
                "cursor",
                "query",
                {"anyOf": [{"type": "integer", "minimum": 0}, {"enum": ["latest", ""]}]},
                "the last seq seen (0 or empty: from the start; latest: only the current cursor)",
            ),
            Param("wait", "query", {"type": "number", "minimum": 0, "maximum": WAIT_MAX_S}, "s"),
            Param(
                "limit",
                "query",
                {
                    "anyOf": [
                        {"type": "integer", "minimum": 1, "maximum": CHANGES_MAX},
                        {"const": ""},
                    ]
                },
                f"page size (default, also when empty: {CHANGES_DEFAULT})",
            ),
        ),
    ),
]


def setup(app: web.Application) -> None:
    contract.register(app, ROUTES)
    app.on_response_prepare.append(neutral_validators)
