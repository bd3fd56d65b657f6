"""The OpenAPI 3 document served at /v1/openapi.json; one operation per route name in routes.py.

tests/server/test_openapi.py checks that every registered route is documented and vice versa.
"""

from __future__ import annotations

import functools
from typing import Any

J = dict[str, Any]


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: J) -> J:
    return {"content": {"application/json": {"schema": schema}}}


def _resp(description: str, schema: J | None = None) -> J:
    out: J = {"description": description}
    if schema is not None:
        out.update(_json(schema))
    return out


def _err(*codes: str) -> J:
    return _resp("error: " + ", ".join(codes), _ref("Error"))


def _int_param(name: str, where: str, description: str, required: bool = True) -> J:
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": {"type": "integer"},
    }


OBJ: J = {"type": "object"}
NODE_ID = _int_param("node_id", "path", "node id (another user's answers 404)")
BLOCK_ID = {
    "name": "block_id",
    "in": "path",
    "required": True,
    "description": "64 lowercase hex chars: BLAKE3 of the bytes",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
VERSION = _int_param("version", "path", "version number")
DEVICE = {
    "name": "X-Cloudfs-Device",
    "in": "header",
    "required": False,
    "description": "device name recorded as committed_by / device (<= 255 bytes)",
    "schema": {"type": "string", "default": "api"},
}
AUTH_ERRORS = {"401": _err("unauthorized")}

BLOCK_LIST = {
    "type": "array",
    "description": "ordered [block_id, length] pairs",
    "items": {
        "type": "array",
        "minItems": 2,
        "maxItems": 2,
        "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    },
}

SCHEMAS: J = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        "additionalProperties": True,
    },
    "Node": {
        "type": "object",
        "required": [
            "id",
            "parent",
            "name",
            "type",
            "mode",
            "size",
            "mtime_ns",
            "ctime_ns",
            "atime_ns",
            "version",
            "committed_by",
            "committed_at_ns",
        ],
        "properties": {
            "id": {"type": "integer"},
            "parent": {"type": ["integer", "null"]},
            "name": {"type": "string"},
            "type": {"enum": ["dir", "file", "symlink"]},
            "mode": {"type": "integer"},
            "size": {"type": "integer"},
            "mtime_ns": {"type": "integer"},
            "ctime_ns": {"type": "integer"},
            "atime_ns": {"type": "integer"},
            "subdirs": {"type": "integer", "description": "dirs: live child directories"},
            "version": {"type": "integer"},
            "committed_by": {"type": "string"},
            "committed_at_ns": {"type": "integer"},
            "target": {"type": "string"},
            "blocks": BLOCK_LIST,
            "trashed_at_ns": {"type": "integer"},
            "original_parent": {"type": ["integer", "null"]},
            "original_path": {"type": "string"},
        },
    },
    "Version": {
        "type": "object",
        "required": ["version", "size", "mtime_ns", "committed_at_ns", "device"],
        "properties": {
            "version": {"type": "integer"},
            "size": {"type": "integer"},
            "mtime_ns": {"type": "integer"},
            "committed_at_ns": {"type": "integer"},
            "device": {"type": "string"},
            "blocks": BLOCK_LIST,
        },
    },
    "Change": {
        "type": "object",
        "required": ["seq", "op", "node", "type", "parent", "name", "version", "device", "time_ns"],
        "properties": {
            "seq": {"type": "integer"},
            "op": {"enum": ["create", "modify", "setattr", "move", "delete", "restore"]},
            "node": {"type": "integer"},
            "type": {"enum": ["dir", "file", "symlink"]},
            "parent": {"type": ["integer", "null"]},
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "device": {"type": "string"},
            "time_ns": {"type": "integer"},
            "old_parent": {"type": ["integer", "null"]},
            "old_name": {"type": "string"},
        },
    },
}


def _op(
    name: str,
    summary: str,
    responses: J,
    params: list[J] | None = None,
    body: J | None = None,
    auth: bool = True,
) -> J:
    op: J = {
        "operationId": name,
        "summary": summary,
        "parameters": params or [],
        "responses": {**responses, **(AUTH_ERRORS if auth else {})},
    }
    if body is not None:
        op["requestBody"] = {"required": True, **body}
    if not auth:
        op["security"] = []
    return op


NODE_OK = _resp("the node", _ref("Node"))


def _paths() -> J:
    return {
        "/healthz": {
            "get": _op(
                "healthz", "liveness, no auth", {"200": _resp("ok", {"type": "object"})}, auth=False
            )
        },
        "/v1/openapi.json": {
            "get": _op("openapi", "this document", {"200": _resp("OpenAPI 3", {"type": "object"})})
        },
        "/v1/me": {
            "get": _op(
                "me",
                "the authenticated user",
                {
                    "200": _resp(
                        "user",
                        {
                            "type": "object",
                            "properties": {
                                "user": {"type": "string"},
                                "user_id": {"type": "integer"},
                                "root": {"type": "integer"},
                                "quota_bytes": {"type": ["integer", "null"]},
                            },
                        },
                    )
                },
            )
        },
        "/v1/usage": {
            "get": _op(
                "usage",
                "the user's usage",
                {
                    "200": _resp(
                        "usage",
                        {
                            "type": "object",
                            "properties": {
                                k: {"type": "number"}
                                for k in (
                                    "logical_bytes",
                                    "stored_bytes",
                                    "dedup_ratio",
                                    "quota_bytes",
                                    "files",
                                    "directories",
                                )
                            },
                        },
                    )
                },
            )
        },
        "/v1/blocks/missing": {
            "post": _op(
                "missing_blocks",
                "which of these block ids are not available to me",
                {
                    "200": _resp(
                        "missing ids in request order",
                        {
                            "type": "object",
                            "properties": {
                                "missing": {"type": "array", "items": {"type": "string"}}
                            },
                        },
                    ),
                    "400": _err("bad_request", "bad_block_id"),
                    "413": _err("too_large"),
                },
                body=_json(
                    {
                        "type": "object",
                        "required": ["block_ids"],
                        "properties": {
                            "block_ids": {
                                "type": "array",
                                "maxItems": 10000,
                                "items": {"type": "string"},
                            }
                        },
                    }
                ),
            )
        },
        "/v1/blocks/{block_id}": {
            "put": _op(
                "put_block",
                "upload a block (body = raw bytes, <= 16 MiB)",
                {
                    "201": _resp("new for this user (never tells if others stored it)", OBJ),
                    "200": _resp("this user already had it; bytes verified", OBJ),
                    "400": _err("bad_block_id", "hash_mismatch"),
                    "413": _err("too_large"),
                    "503": _err("store_unavailable"),
                },
                params=[BLOCK_ID],
                body={
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    }
                },
            ),
            "get": _op(
                "get_block",
                "download a block (Range supported)",
                {
                    "200": {
                        "description": "the bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "206": {"description": "the requested range"},
                    "400": _err("bad_block_id"),
                    "404": _err("not_found"),
                    "416": _err("range_not_satisfiable"),
                    "503": _err("store_unavailable"),
                },
                params=[
                    BLOCK_ID,
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
            ),
            "head": _op(
                "head_block",
                "is the block available to me",
                {
                    "200": {"description": "available; Content-Length is its size"},
                    "400": _err("bad_block_id"),
                    "404": _err("not_found"),
                },
                params=[BLOCK_ID],
            ),
        },
        "/v1/nodes/{node_id}": {
            "get": _op(
                "get_node",
                "a node",
                {"200": NODE_OK, "404": _err("not_found")},
                params=[
                    NODE_ID,
                    {
                        "name": "blocks",
                        "in": "query",
                        "required": False,
                        "description": "1: include the file's blocks",
                        "schema": {"type": "string", "enum": ["0", "1"]},
                    },
                ],
            ),
            "patch": _op(
                "patch_node",
                "set mode, mtime and/or atime",
                {"200": NODE_OK, "400": _err("bad_request"), "404": _err("not_found")},
                params=[NODE_ID, DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "properties": {
                            "mode": {"type": "integer"},
                            "mtime_ns": {"type": "integer"},
                            "atime_ns": {"type": "integer"},
                        },
                    }
                ),
            ),
            "delete": _op(
                "delete_node",
                "trash a file/symlink or remove an empty directory",
                {
                    "200": _resp(
                        "done", {"type": "object", "properties": {"trashed": {"type": "boolean"}}}
                    ),
                    "404": _err("not_found"),
                    "409": _err("not_empty", "invalid_move"),
                },
                params=[NODE_ID, DEVICE],
            ),
        },
        "/v1/nodes/{node_id}/children": {
            "get": _op(
                "list_children",
                "a page of a directory, sorted by name bytes",
                {
                    "200": _resp(
                        "entries",
                        {
                            "type": "object",
                            "properties": {
                                "entries": {"type": "array", "items": _ref("Node")},
                                "next": {"type": ["string", "null"]},
                            },
                        },
                    ),
                    "404": _err("not_found"),
                    "409": _err("not_a_directory"),
                },
                params=[
                    NODE_ID,
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    _int_param("limit", "query", "1..5000, default 1000", False),
                ],
            ),
            "post": _op(
                "create_node",
                "create a dir, file (a commit) or symlink",
                {
                    "201": NODE_OK,
                    "400": _err("bad_request", "invalid_name", "name_too_long", "bad_block_id"),
                    "404": _err("not_found"),
                    "409": _err("exists", "not_a_directory", "missing_blocks"),
                    "413": _err("too_large"),
                    "507": _err("quota_exceeded"),
                },
                params=[NODE_ID, DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"enum": ["dir", "file", "symlink"]},
                            "mode": {"type": "integer"},
                            "mtime_ns": {"type": "integer"},
                            "atime_ns": {"type": "integer"},
                            "target": {"type": "string"},
                            "size": {"type": "integer"},
                            "blocks": BLOCK_LIST,
                        },
                    }
                ),
            ),
        },
        "/v1/nodes/{node_id}/lookup": {
            "get": _op(
                "lookup",
                "a child by name",
                {
                    "200": NODE_OK,
                    "400": _err("invalid_name", "name_too_long"),
                    "404": _err("not_found"),
                    "409": _err("not_a_directory"),
                },
                params=[
                    NODE_ID,
                    {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}},
                ],
            )
        },
        "/v1/nodes/{node_id}/content": {
            "put": _op(
                "commit",
                "commit new content against base_version",
                {
                    "200": NODE_OK,
                    "400": _err("bad_request", "bad_block_id"),
                    "404": _err("not_found"),
                    "409": _err("missing_blocks", "version_conflict", "is_a_directory"),
                    "413": _err("too_large"),
                    "507": _err("quota_exceeded"),
                },
                params=[NODE_ID, DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "required": ["base_version", "size", "blocks"],
                        "properties": {
                            "base_version": {"type": "integer"},
                            "size": {"type": "integer"},
                            "blocks": BLOCK_LIST,
                            "mtime_ns": {"type": "integer"},
                        },
                    }
                ),
            )
        },
        "/v1/nodes/{node_id}/move": {
            "post": _op(
                "move_node",
                "rename/move, optionally replacing the target",
                {
                    "200": _resp(
                        "moved",
                        {
                            "type": "object",
                            "properties": {
                                "node": _ref("Node"),
                                "replaced": {"type": ["integer", "null"]},
                            },
                        },
                    ),
                    "400": _err("bad_request", "invalid_name", "name_too_long"),
                    "404": _err("not_found"),
                    "409": _err(
                        "exists", "not_empty", "not_a_directory", "is_a_directory", "invalid_move"
                    ),
                },
                params=[NODE_ID, DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "required": ["parent", "name"],
                        "properties": {
                            "parent": {"type": "integer"},
                            "name": {"type": "string"},
                            "replace": {"type": "boolean", "default": False},
                        },
                    }
                ),
            )
        },
        "/v1/nodes/{node_id}/versions": {
            "get": _op(
                "list_versions",
                "a file's versions, newest first",
                {
                    "200": _resp(
                        "versions",
                        {
                            "type": "object",
                            "properties": {"versions": {"type": "array", "items": _ref("Version")}},
                        },
                    ),
                    "404": _err("not_found"),
                    "409": _err("is_a_directory"),
                },
                params=[NODE_ID],
            )
        },
        "/v1/nodes/{node_id}/versions/{version}": {
            "get": _op(
                "get_version",
                "one version with its blocks",
                {"200": _resp("version", _ref("Version")), "404": _err("not_found")},
                params=[NODE_ID, VERSION],
            )
        },
        "/v1/nodes/{node_id}/versions/{version}/restore": {
            "post": _op(
                "restore_version",
                "make an old version's content the new version",
                {
                    "200": NODE_OK,
                    "404": _err("not_found"),
                    "409": _err("missing_blocks"),
                    "507": _err("quota_exceeded"),
                },
                params=[NODE_ID, VERSION, DEVICE],
            )
        },
        "/v1/trash": {
            "get": _op(
                "list_trash",
                "trashed files and symlinks, newest first",
                {
                    "200": _resp(
                        "entries",
                        {
                            "type": "object",
                            "properties": {"entries": {"type": "array", "items": _ref("Node")}},
                        },
                    )
                },
            )
        },
        "/v1/trash/{node_id}/restore": {
            "post": _op(
                "restore_trash",
                "bring a trashed node back",
                {
                    "200": NODE_OK,
                    "400": _err("bad_request", "invalid_name"),
                    "404": _err("not_found"),
                    "409": _err("exists", "not_a_directory"),
                    "507": _err("quota_exceeded"),
                },
                params=[NODE_ID, DEVICE],
                body=_json(
                    {
                        "type": "object",
                        "properties": {"parent": {"type": "integer"}, "name": {"type": "string"}},
                    }
                ),
            )
        },
        "/v1/changes": {
            "get": _op(
                "changes",
                "the change log after a cursor, with optional long-poll",
                {
                    "200": _resp(
                        "changes",
                        {
                            "type": "object",
                            "properties": {
                                "changes": {"type": "array", "items": _ref("Change")},
                                "cursor": {"type": "integer"},
                                "more": {"type": "boolean"},
                                "retry_after_s": {"type": "number"},
                            },
                        },
                    ),
                    "400": _err("bad_request"),
                    "410": _err("cursor_expired"),
                },
                params=[
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "last seq seen, or 'latest'",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "long-poll seconds (<= 60)",
                        "schema": {"type": "number"},
                    },
                    _int_param("limit", "query", "1..10000, default 1000", False),
                ],
            )
        },
    }


@functools.cache
def document() -> J:
    from cloudfs_server.devices import (
        openapi as devices_openapi,  # device routes (issue 5); imports our helpers
    )
    from cloudfs_server.http import batch  # bulk routes; imports our helpers

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cloudfs",
            "version": "1",
            "description": "cloudfs wire protocol v1 (see docs/protocol.md)",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {**_paths(), **batch.paths(), **devices_openapi.paths()},
    }
