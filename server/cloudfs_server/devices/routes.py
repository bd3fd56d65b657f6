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

from aiohttp import web
from msgspec import UNSET

from cloudfs_server.config import open_device_store
from cloudfs_server.devices import models as dm
from cloudfs_server.devices.registry import DEFAULT_LEASE_S, DeviceRegistry
from cloudfs_server.devices.store import DeviceStore
from cloudfs_server.errors import (
    NotFoundError,
    ServerError,
    ServerFullError,
    StoreUnavailableError,
)
from cloudfs_server.http import contract
from cloudfs_server.http.contract import Link, Param, Route, answer
from cloudfs_server.http.routes import BLOCK_ID
from cloudfs_server.http.state import CONFIG, current_user
from cloudfs_server.model import INT64_MAX, validate_block_id, validate_device

log = logging.getLogger(__name__)

REGISTRY = web.AppKey("devices_registry", DeviceRegistry)
# The lease task wakes at least this often, so a new short lease is never checked late.
SWEEP_MAX_S = 0.5


# ---- parsing -----------------------------------------------------------------------------
def _device_id(request: web.Request) -> int:
    value = int(request.match_info["device_id"])  # the route pattern guarantees digits
    if value < 1 or value > INT64_MAX:
        raise NotFoundError(f"device {value} is not joined", device_id=value)
    return value


def _registry(request: web.Request) -> DeviceRegistry:
    return request.app[REGISTRY]


# ---- handlers ----------------------------------------------------------------------------
async def join_device(request: web.Request, body: dm.JoinRequest) -> web.Response:
    if body.device_name is UNSET:
        device_name = validate_device(request.headers.get("X-Cloudfs-Device"))
    else:
        device_name = body.device_name
    registry = _registry(request)
    record = await registry.join(
        current_user(request).user_id, device_name, body.blocks, body.lease_s
    )
    held = registry.blocks_held(record.user_id, record.device_id)
    return answer(dm.Joined(record.device_id, record.lease_s, record.session, held), status=201)


async def list_devices(request: web.Request) -> web.Response:
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)  # shared stores: devices joined through other servers
    devices = registry.list_devices(user_id)
    return answer(dm.Devices([dm.Device(**d) for d in devices]))


async def change_blocks(request: web.Request, body: dm.ChangeBlocksRequest) -> web.Response:
    added, removed, held = await _registry(request).change_blocks(
        current_user(request).user_id, _device_id(request), body.session, body.add, body.remove
    )
    return answer(dm.BlocksChanged(added, removed, held))


async def heartbeat(request: web.Request, body: dm.SessionRequest) -> web.Response:
    user_id, device_id = current_user(request).user_id, _device_id(request)
    registry = _registry(request)
    record = await registry.heartbeat(user_id, device_id, body.session)
    held = registry.blocks_held(user_id, device_id)
    return answer(dm.Heartbeat(device_id, record.lease_s, record.last_seen_ns, held))


async def leave_device(request: web.Request, body: dm.SessionRequest) -> web.Response:
    await _registry(request).leave(current_user(request).user_id, _device_id(request), body.session)
    return answer(dm.Left(True))


async def request_block(request: web.Request, body: dm.RequestBlockRequest) -> web.Response:
    registry, user_id, device_id = (
        _registry(request),
        current_user(request).user_id,
        _device_id(request),
    )
    await registry.sync(user_id, (device_id, body.session))
    holders = registry.request(user_id, device_id, body.session, body.block_id)
    return answer(dm.HoldersOut(holders))


async def holders_of_blocks(request: web.Request, body: dm.HoldersRequest) -> web.Response:
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)
    holders = registry.holders(user_id, body.block_ids)
    return answer(dm.HoldersOfBlocks(holders))


async def holders_of_block(request: web.Request) -> web.Response:
    block_id = validate_block_id(request.match_info["block_id"])
    registry, user_id = _registry(request), current_user(request).user_id
    await registry.sync(user_id)
    holders = registry.holders(user_id, [block_id])
    return answer(dm.HoldersOfBlock(block_id, holders[block_id]))


DEVICE = r"/v1/devices/{device_id:\d+}"
DEVICE_ID = Param(
    "device_id", "path", {"type": "integer", "minimum": 1}, "device id inside the account"
)
GONE = "not_found (not joined with this session: left or lease expired; join again)"
BAD_IDS = "bad_request, bad_block_id"

ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/devices",
        join_device,
        "join_device",
        "join the account's device registry with the blocks this device holds",
        {201: ("joined; the smallest free device id", dm.Joined)},
        {400: BAD_IDS, 413: "too_large (too many devices or blocks)"},
        (Param("X-Cloudfs-Device", "header", {"type": "string"}, "default device_name"),),
        body=dm.JoinRequest,
        links=tuple(
            Link(
                201,
                op,
                {"device_id": "$response.body#/device_id"},
                {"session": "$response.body#/session"},
            )
            for op in ("change_device_blocks", "device_heartbeat", "leave_device")
        ),
    ),
    Route(
        "GET",
        "/v1/devices",
        list_devices,
        "list_devices",
        "the account's joined devices, by id",
        {200: ("devices", dm.Devices)},
    ),
    Route(
        "POST",
        "/v1/devices/holders",
        holders_of_blocks,
        "holders_of_blocks",
        "which of the account's devices hold each of these blocks",
        {200: ("block id -> holders", dm.HoldersOfBlocks)},
        {400: BAD_IDS},
        body=dm.HoldersRequest,
    ),
    Route(
        "GET",
        "/v1/devices/holders/{block_id}",
        holders_of_block,
        "holders_of_block",
        "which of the account's devices hold this block",
        {200: ("holders", dm.HoldersOfBlock)},
        {400: "bad_block_id"},
        (BLOCK_ID,),
    ),
    Route(
        "POST",
        DEVICE + "/blocks",
        change_blocks,
        "change_device_blocks",
        "the device gained `add` and evicted `remove` (remove applies last)",
        {200: ("counts", dm.BlocksChanged)},
        {400: BAD_IDS, 404: GONE, 413: "too_large"},
        (DEVICE_ID,),
        body=dm.ChangeBlocksRequest,
    ),
    Route(
        "POST",
        DEVICE + "/heartbeat",
        heartbeat,
        "device_heartbeat",
        "extend the lease",
        {200: ("the lease", dm.Heartbeat)},
        {400: "bad_request", 404: GONE},
        (DEVICE_ID,),
        body=dm.SessionRequest,
    ),
    Route(
        "POST",
        DEVICE + "/leave",
        leave_device,
        "leave_device",
        "leave the registry; the id is free at once",
        {200: ("left", dm.Left)},
        {400: "bad_request", 404: GONE},
        (DEVICE_ID,),
        body=dm.SessionRequest,
    ),
    Route(
        "POST",
        DEVICE + "/request",
        request_block,
        "request_block",
        "the holders of a block before the call; the device then holds it too (if any did)",
        {200: ("holders", dm.HoldersOut)},
        {400: BAD_IDS, 404: GONE, 413: "too_large"},
        (DEVICE_ID,),
        body=dm.RequestBlockRequest,
    ),
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
    contract.register(app, ROUTES)
    app.cleanup_ctx.append(_registry_ctx(store, default_lease_s))
