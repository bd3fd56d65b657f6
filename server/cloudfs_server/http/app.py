"""The aiohttp app factory: configuration, stores in cleanup_ctx, the purge task, middleware, and
the route tables (http/routes.py, devices/routes.py).

`create_app(config)` builds an app with its own stores; nothing is module-level state, so tests can
run several apps side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from cloudfs_server.config import DAY_NS, MiB, ServerConfig, open_stores
from cloudfs_server.devices import routes as device_routes
from cloudfs_server.errors import StoreUnavailableError
from cloudfs_server.http import batch, contract, login, routes
from cloudfs_server.http.metrics import (
    Metrics,
    WarningLimiter,
    count_sent_bytes,
    metrics_handler,
    metrics_middleware,
    metrics_route,
)
from cloudfs_server.http.middleware import auth_middleware, error_middleware
from cloudfs_server.http.notify import ChangeNotifier
from cloudfs_server.http.state import (
    BLOCKS,
    CONFIG,
    FULL_WARNING,
    GC_LOCK,
    META,
    METRICS,
    NOTIFIER,
)

__all__ = ["DAY_NS", "MiB", "ServerConfig", "create_app", "open_stores"]

log = logging.getLogger(__name__)


async def _stores_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    meta, blocks, gc_lock = open_stores(config)
    await meta.open()
    try:
        await blocks.open()  # may refuse (unreachable store, wrong key): close meta then
    except BaseException:
        gc_lock.close()
        await meta.close()
        raise
    app[META], app[BLOCKS], app[GC_LOCK] = meta, blocks, gc_lock
    # Changes committed through other servers on a shared database wake this one's long-polls.
    watcher = asyncio.create_task(meta.watch_changes(app[NOTIFIER].notify), name="ChangeWatchTask")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        gc_lock.close()
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
            except StoreUnavailableError as exc:  # the database is away: it is not our fault
                log.warning("purge postponed by %g s: %s", delay, exc.message)
                continue
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
    notifier = ChangeNotifier(config.max_long_polls, config.max_long_polls_per_user)
    metrics = Metrics(notifier)
    app = web.Application(
        client_max_size=config.json_max_bytes,
        middlewares=[metrics_middleware(metrics), error_middleware, auth_middleware],
    )
    app[CONFIG] = config
    app[NOTIFIER] = notifier
    app[METRICS] = metrics
    app[FULL_WARNING] = WarningLimiter()
    app.cleanup_ctx.append(_stores_ctx)
    app.cleanup_ctx.append(_purge_ctx)
    app.on_shutdown.append(_wake_long_polls)
    app.on_response_prepare.append(count_sent_bytes(metrics))
    routes.setup(app)
    batch.setup(app)  # POST /v1/batch, POST /v1/blocks/pack (issue 8: local-first sync)
    login.setup(app)  # POST /v1/login (issue 11: passwords and device tokens)
    device_routes.setup(app)  # /v1/devices… (issue 5): routes, registry, lease task
    token = config.metrics_token
    handler = metrics_handler(metrics, token, token is not None)
    contract.register(app, [metrics_route(handler)])
    app.on_startup.append(contract.publish_document)
    return app


def create_metrics_app(app: web.Application) -> web.Application:
    """A second app serving only `/metrics` of `app`, without auth (`serve --metrics-address`:
    bind it where only the monitoring system reaches)."""
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics_handler(app[METRICS], None), name="metrics")
    return metrics_app
