"""OpenAPI paths of the device routes (devices.ROUTES), merged into openapi.document()."""

from __future__ import annotations

from cloudfs_server.http.openapi import J, _err, _int_param, _json, _op, _resp

DEVICE_ID = _int_param("device_id", "path", "device id inside the account (1, 2, …)")
BLOCK_IDS = {
    "type": "array",
    "maxItems": 10000,
    "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
HOLDERS = {"type": "array", "items": {"type": "integer"}, "description": "ascending device ids"}
SESSION = {"type": "string", "description": "the `session` returned by join"}
GONE = _err("not_found (not joined with this session: left or lease expired; join again)")


def _session_body(**extra: J) -> J:
    return _json(
        {
            "type": "object",
            "required": ["session", *[k for k in extra if k == "block_id"]],
            "properties": {"session": SESSION, **extra},
        }
    )


def paths() -> J:
    device = "/v1/devices/{device_id}"
    return {
        "/v1/devices": {
            "post": _op(
                "join_device",
                "join the account's device registry with the blocks this device holds",
                {
                    "201": _resp(
                        "joined; the smallest free device id",
                        {
                            "type": "object",
                            "properties": {
                                "device_id": {"type": "integer"},
                                "lease_s": {"type": "integer"},
                                "session": {"type": "string"},
                                "blocks": {"type": "integer"},
                            },
                        },
                    ),
                    "400": _err("bad_request", "bad_block_id"),
                    "413": _err("too_large"),
                },
                body=_json(
                    {
                        "type": "object",
                        "properties": {
                            "device_name": {
                                "type": "string",
                                "description": "default: the X-Cloudfs-Device header",
                            },
                            "blocks": BLOCK_IDS,
                            "lease_s": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 3600,
                                "description": "default 60",
                            },
                        },
                    }
                ),
            ),
            "get": _op(
                "list_devices",
                "the account's joined devices, by id",
                {
                    "200": _resp(
                        "devices",
                        {
                            "type": "object",
                            "properties": {
                                "devices": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            k: {"type": t}
                                            for k, t in (
                                                ("device_id", "integer"),
                                                ("device_name", "string"),
                                                ("joined_ns", "integer"),
                                                ("last_seen_ns", "integer"),
                                                ("lease_s", "integer"),
                                                ("expires_in_s", "number"),
                                                ("blocks", "integer"),
                                            )
                                        },
                                    },
                                }
                            },
                        },
                    )
                },
            ),
        },
        "/v1/devices/holders": {
            "post": _op(
                "holders_of_blocks",
                "which of the account's devices hold each of these blocks",
                {
                    "200": _resp(
                        "block id -> holders",
                        {
                            "type": "object",
                            "properties": {
                                "holders": {"type": "object", "additionalProperties": HOLDERS}
                            },
                        },
                    ),
                    "400": _err("bad_request", "bad_block_id"),
                },
                body=_json(
                    {
                        "type": "object",
                        "required": ["block_ids"],
                        "properties": {"block_ids": BLOCK_IDS},
                    }
                ),
            )
        },
        "/v1/devices/holders/{block_id}": {
            "get": _op(
                "holders_of_block",
                "which of the account's devices hold this block",
                {
                    "200": _resp(
                        "holders",
                        {
                            "type": "object",
                            "properties": {"block_id": {"type": "string"}, "holders": HOLDERS},
                        },
                    ),
                    "400": _err("bad_block_id"),
                },
                params=[
                    {
                        "name": "block_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    }
                ],
            )
        },
        device + "/blocks": {
            "post": _op(
                "change_device_blocks",
                "the device gained (`add`) and evicted (`remove`) blocks",
                {
                    "200": _resp(
                        "counts",
                        {
                            "type": "object",
                            "properties": {
                                k: {"type": "integer"} for k in ("added", "removed", "blocks")
                            },
                        },
                    ),
                    "400": _err("bad_request", "bad_block_id"),
                    "404": GONE,
                    "413": _err("too_large"),
                },
                params=[DEVICE_ID],
                body=_session_body(add=BLOCK_IDS, remove=BLOCK_IDS),
            )
        },
        device + "/heartbeat": {
            "post": _op(
                "device_heartbeat",
                "extend the device's lease",
                {
                    "200": _resp(
                        "lease extended; `blocks` = blocks the server has for the device",
                        {
                            "type": "object",
                            "properties": {
                                k: {"type": "integer"}
                                for k in ("device_id", "lease_s", "last_seen_ns", "blocks")
                            },
                        },
                    ),
                    "400": _err("bad_request"),
                    "404": GONE,
                },
                params=[DEVICE_ID],
                body=_session_body(),
            )
        },
        device + "/leave": {
            "post": _op(
                "leave_device",
                "leave the registry; the id is free at once",
                {
                    "200": _resp("left", {"type": "object"}),
                    "400": _err("bad_request"),
                    "404": GONE,
                },
                params=[DEVICE_ID],
                body=_session_body(),
            )
        },
        device + "/request": {
            "post": _op(
                "request_block",
                "holders of a block before this call; the device holds it too if any",
                {
                    "200": _resp("holders", {"type": "object", "properties": {"holders": HOLDERS}}),
                    "400": _err("bad_request", "bad_block_id"),
                    "404": GONE,
                },
                params=[DEVICE_ID],
                body=_session_body(block_id={"type": "string", "pattern": "^[0-9a-f]{64}$"}),
            )
        },
    }
