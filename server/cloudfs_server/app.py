"""The aiohttp app factory: configuration, typed app state, stores in cleanup_ctx, middleware.

`create_app(config)` builds an app with its own stores; nothing is module-level state, so tests can
run several apps side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from cloudfs_server.auth import bearer_token
from cloudfs_server.blockstore import BlockStore
from cloudfs_server.config import DAY_NS, MiB, ServerConfig, open_stores
from cloudfs_server.errors import ServerError, UnauthorizedError
from cloudfs_server.gclock import GcLock
from cloudfs_server.meta import MetadataStore
from cloudfs_server.model import UserInfo

__all__ = ["DAY_NS", "MiB", "ServerConfig", "create_app", "open_stores"]

log = logging.getLogger(__name__)


class ChangeNotifier:
    """Wakes long-polls of a user after a change is committed (one process only).

    Each waiting request holds a future in its user's set; a change resolves only that user's
    futures, so the cost of a change does not grow with the number of other users' long-polls.
    """

    def __init__(self, max_waiting: int = 10_000) -> None:
        self._generation: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self.closing = False
        self.max_waiting = max_waiting
        self.waiting = 0  # long-polls held right now (all users)

    @property
    def busy(self) -> bool:
        """Too many long-polls are held: idle subscribers should come back later."""
        return self.waiting >= self.max_waiting

    def generation(self, user_id: int) -> int:
        return self._generation.get(user_id, 0)

    async def notify(self, user_id: int) -> None:
        self._generation[user_id] = self.generation(user_id) + 1
        for fut in self._waiters.pop(user_id, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, user_id: int, seen: int, timeout_s: float) -> None:
        """Return when the user's generation moved past `seen`, on shutdown, or after the wait."""
        if self.closing or self.generation(user_id) != seen:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(user_id, set())
        waiters.add(fut)
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout_s)
        finally:
            self.waiting -= 1
            waiters.discard(fut)
            if not waiters and self._waiters.get(user_id) is waiters:
                del self._waiters[user_id]

    async def close(self) -> None:
        self.closing = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()


CONFIG = web.AppKey("config", ServerConfig)
META = web.AppKey("meta", MetadataStore)
BLOCKS = web.AppKey("blocks", BlockStore)
GC_LOCK = web.AppKey("gc_lock", GcLock)
NOTIFIER = web.AppKey("notifier", ChangeNotifier)
# The authenticated user. web.RequestKey exists from aiohttp 3.14; older versions take a str key.
USER: Any = (
    web.RequestKey("cloudfs_user", UserInfo) if hasattr(web, "RequestKey") else "cloudfs_user"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors (unknown route, wrong method, body over client_max_size) → our codes.
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def error_json(status: int, body: dict[str, object]) -> web.Response:
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one translator from exceptions to status + JSON body."""
    try:
        return await handler(request)
    except ServerError as exc:
        if exc.status == 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        resp = error_json(exc.status, exc.body())
        resp.headers.update(exc.headers())
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            limit = request.app[CONFIG].json_max_bytes
            message = f"request body is over the limit of {limit} bytes"
        else:
            message = exc.reason
        return error_json(exc.status, {"error": code, "message": message})
    except ConnectionResetError:
        # The client went away (e.g. in the middle of a block body): nothing was stored and
        # nobody reads this answer; keep the log free of a traceback.
        log.info("%s %s: client disconnected", request.method, request.path)
        return error_json(400, {"error": "bad_request", "message": "connection lost"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_json(500, {"error": "internal", "message": "internal server error"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route under /v1 needs a valid bearer token; the user goes to request[USER]."""
    if request.path.startswith("/v1/") or request.path == "/v1":
        token = bearer_token(request.headers.get("Authorization"))
        user = await request.app[META].authenticate(token)
        if user is None:
            raise UnauthorizedError("the token is not valid")
        request[USER] = user
    return await handler(request)


def current_user(request: web.Request) -> UserInfo:
    user: UserInfo = request[USER]
    return user


async def _stores_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    meta, blocks, gc_lock = open_stores(config)
    await meta.open()
    await blocks.open()
    app[META], app[BLOCKS], app[GC_LOCK] = meta, blocks, gc_lock
    try:
        yield
    finally:
        await blocks.close()
        await meta.close()


async def _purge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Purge history and trash past retention every `purge_interval_s` while serving."""
    config = app[CONFIG]

    async def purge_task() -> None:
        delay = min(config.purge_interval_s, 10.0)  # once soon after start, then every interval
        while True:
            await asyncio.sleep(delay)
            delay = config.purge_interval_s
            try:
                versions, trashed = await app[META].purge(int(config.retention_days * DAY_NS))
            except Exception:  # a background task's boundary: log, keep serving, retry later
                log.exception("purge failed; retrying in %g s", delay)
                continue
            if versions or trashed:
                log.info("purged %d old versions and %d trashed nodes", versions, trashed)

    task = asyncio.create_task(purge_task(), name="PurgeTask")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _wake_long_polls(app: web.Application) -> None:
    await app[NOTIFIER].close()


def create_app(config: ServerConfig) -> web.Application:
    from cloudfs_server import devices, routes  # they import app keys from here

    app = web.Application(
        client_max_size=config.json_max_bytes,
        middlewares=[error_middleware, auth_middleware],
    )
    app[CONFIG] = config
    app[NOTIFIER] = ChangeNotifier(config.max_long_polls)
    app.cleanup_ctx.append(_stores_ctx)
    app.cleanup_ctx.append(_purge_ctx)
    app.on_shutdown.append(_wake_long_polls)
    routes.setup(app)
    devices.setup(app)  # /v1/devices… (issue 5): routes, registry, lease task
    return app
