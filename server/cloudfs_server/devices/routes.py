"""HTTP routes of the device registry (`/v1/devices…`), its lease task, and `setup(app)`.

Routes parse, call the `DeviceRegistry` (devices/registry.py), and answer; the registry keeps
one `FileSharing` per account (`cloudfs.peers`, the pure layer-0 structure shared with the
client; tests/test_layers.py allows the server exactly such pure modules). The protocol is in
docs/protocol.md ("Devices").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from cloudfs_server.config import open_device_store
from cloudfs_server.devices.registry import (
    DEFAULT_LEASE_S,
    MAX_LEASE_S,
    MIN_LEASE_S,
    DeviceRegistry,
)
from cloudfs_server.devices.store import DeviceStore
from cloudfs_server.errors import (
    BadRequestError,
    NotFoundError,
    ServerError,
    ServerFullError,
    StoreUnavailableError,
)
from cloudfs_server.http.routes import json_body, reject_unknown, require
from cloudfs_server.http.state import CONFIG, current_user
from cloudfs_server.model import (
    DEVICE_MAX_BYTES,
    INT64_MAX,
    validate_block_id,
    validate_device,
    validate_int,
)

log = logging.getLogger(__name__)

REGISTRY = web.AppKey("devices_registry", DeviceRegistry)
# Block ids per call (join, blocks, holders): larger sets are sent in several calls.
BATCH_MAX = 10_000
# The lease task wakes at least this often, so a new short lease is never checked late.
SWEEP_MAX_S = 0.5


# ---- parsing -----------------------------------------------------------------------------
def _device_id(request: web.Request) -> int:
    value = int(request.match_info["device_id"])  # the route pattern guarantees digits
    if value < 1 or value > INT64_MAX:
        raise NotFoundError(f"device {value} is not joined", device_id=value)
    return value


def _block_ids(body: dict[str, Any], key: str, required: bool = True) -> list[str]:
    value = require(body, key) if required else body.get(key, [])
    if not isinstance(value, list):
        raise BadRequestError(f"'{key}' must be a list of block ids")
    if len(value) > BATCH_MAX:
        raise BadRequestError(
            f"'{key}' has {len(value)} block ids; at most {BATCH_MAX} per call (send the rest "
            "with POST /v1/devices/{device_id}/blocks)"
        )
    return [validate_block_id(block_id) for block_id in value]


def _session(body: dict[str, Any]) -> str:
    session = require(body, "session")
    if not isinstance(session, str):
        raise BadRequestError("'session' must be a string")
    return session


def _registry(request: web.Request) -> DeviceRegistry:
    return request.app[REGISTRY]


# ---- handlers ----------------------------------------------------------------------------
async def join_device(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"device_name", "blocks", "lease_s"})
    if "device_name" in body:
        name = body["device_name"]
        if not isinstance(name, str) or not name:
            raise BadRequestError("'device_name' must be a non-empty string")
        if len(name.encode("utf-8", "surrogateescape")) > DEVICE_MAX_BYTES:
            raise BadRequestError(f"'device_name' is longer than {DEVICE_MAX_BYTES} bytes")
        device_name = name
    else:
        device_name = validate_device(request.headers.get("X-Cloudfs-Device"))
    blocks = _block_ids(body, "blocks", required=False)
    lease_s = None
    if body.get("lease_s") is not None:
        lease_s = validate_int(body["lease_s"], "lease_s", MIN_LEASE_S)
        if lease_s > MAX_LEASE_S:
            raise BadRequestError(f"'lease_s' must be between {MIN_LEASE_S} and {MAX_LEASE_S}")
    registry = _registry(request)
    record = await registry.join(current_user(request).user_id, device_name, blocks, lease_s)
    return web.json_response(
        {
            "device_id": record.device_id,
            "lease_s": record.lease_s,
            "session": record.session,
            "blocks": registry.blocks_held(record.user_id, record.device_id),
        },
        status=201,
    )


async def list_devices(request: web.Request) -> web.Response:
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)  # shared stores: devices joined through other servers
    devices = registry.list_devices(user_id)
    return web.json_response({"devices": devices})


async def change_blocks(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"session", "add", "remove"})
    session = _session(body)
    add = _block_ids(body, "add", required=False)
    remove = _block_ids(body, "remove", required=False)
    added, removed, held = await _registry(request).change_blocks(
        current_user(request).user_id, _device_id(request), session, add, remove
    )
    return web.json_response({"added": added, "removed": removed, "blocks": held})


async def heartbeat(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"session"})
    user_id, device_id = current_user(request).user_id, _device_id(request)
    registry = _registry(request)
    record = await registry.heartbeat(user_id, device_id, _session(body))
    return web.json_response(
        {
            "device_id": device_id,
            "lease_s": record.lease_s,
            "last_seen_ns": record.last_seen_ns,
            "blocks": registry.blocks_held(user_id, device_id),
        }
    )


async def leave_device(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"session"})
    await _registry(request).leave(
        current_user(request).user_id, _device_id(request), _session(body)
    )
    return web.json_response({"left": True})


async def request_block(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"session", "block_id"})
    session = _session(body)
    block_id = validate_block_id(require(body, "block_id"))
    registry, user_id, device_id = (
        _registry(request),
        current_user(request).user_id,
        _device_id(request),
    )
    await registry.sync(user_id, (device_id, session))
    holders = registry.request(user_id, device_id, session, block_id)
    return web.json_response({"holders": holders})


async def holders_of_blocks(request: web.Request) -> web.Response:
    body = await json_body(request)
    reject_unknown(body, {"block_ids"})
    block_ids = _block_ids(body, "block_ids")
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)
    holders = registry.holders(user_id, block_ids)
    return web.json_response({"holders": holders})


async def holders_of_block(request: web.Request) -> web.Response:
    block_id = validate_block_id(request.match_info["block_id"])
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)
    holders = registry.holders(user_id, [block_id])
    return web.json_response({"block_id": block_id, "holders": holders[block_id]})


DEVICE = r"/v1/devices/{device_id:\d+}"

# (method, path, handler, name) like routes.ROUTES; the name keys the OpenAPI operation.
ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/devices", join_device, "join_device"),
    ("GET", "/v1/devices", list_devices, "list_devices"),
    ("POST", "/v1/devices/holders", holders_of_blocks, "holders_of_blocks"),
    ("GET", "/v1/devices/holders/{block_id}", holders_of_block, "holders_of_block"),
    ("POST", DEVICE + "/blocks", change_blocks, "change_device_blocks"),
    ("POST", DEVICE + "/heartbeat", heartbeat, "device_heartbeat"),
    ("POST", DEVICE + "/leave", leave_device, "leave_device"),
    ("POST", DEVICE + "/request", request_block, "request_block"),
]


# ---- lifecycle ---------------------------------------------------------------------------
async def lease_task(registry: DeviceRegistry) -> None:
    """Remove devices whose lease ran out, forever (cancelled at shutdown)."""
    while True:
        deadline = registry.next_deadline()
        delay = SWEEP_MAX_S if deadline is None else deadline - registry.clock()
        await asyncio.sleep(min(SWEEP_MAX_S, max(0.01, delay)))
        try:
            await registry.expire()
        except ServerFullError:  # no traceback per sweep; the request log says it (rate-limited)
            log.info("expiring devices postponed: the server is out of space")
        except StoreUnavailableError as exc:  # the database is away: try on the next sweep
            log.warning("expiring devices postponed: %s", exc.message)
        except ServerError:  # the store failed: keep serving, try again on the next sweep
            log.exception("expiring devices failed")


def _registry_ctx(
    store: DeviceStore | None, default_lease_s: int
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        device_store = store
        if device_store is None:
            device_store = open_device_store(app[CONFIG])
        await device_store.open()
        registry = DeviceRegistry(device_store, default_lease_s)
        restored = await registry.restore()
        if restored:
            log.info("restored %d devices; they keep their ids while their lease runs", restored)
        app[REGISTRY] = registry
        task = asyncio.create_task(lease_task(registry), name="DeviceLeaseTask")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await device_store.close()

    return ctx


def setup(
    app: web.Application,
    store: DeviceStore | None = None,
    default_lease_s: int = DEFAULT_LEASE_S,
) -> None:
    """Register the device routes and the registry's lifecycle (store, restore, lease task).

    `store` defaults to the config's engine (`config.open_device_store`).
    """
    for method, path, handler, name in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler, name=name, allow_head=False)
        else:
            app.router.add_route(method, path, handler, name=name)
    app.cleanup_ctx.append(_registry_ctx(store, default_lease_s))
