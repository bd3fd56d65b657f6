"""The app's typed state: `web.AppKey`s for the stores and services, and the request's user.

Routes, the device routes and the middleware import these; `app.create_app` fills them. Keeping
them here (not in app.py) means no route module imports the app factory, so there is no cycle.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cloudfs_server.config import ServerConfig
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.http.metrics import Metrics, WarningLimiter
from cloudfs_server.http.notify import ChangeNotifier
from cloudfs_server.model import UserInfo

CONFIG = web.AppKey("config", ServerConfig)
META = web.AppKey("meta", MetadataStore)
BLOCKS = web.AppKey("blocks", BlockStore)
GC_LOCK = web.AppKey("gc_lock", GcLock)
NOTIFIER = web.AppKey("notifier", ChangeNotifier)
METRICS = web.AppKey("metrics", Metrics)
FULL_WARNING = web.AppKey("full_warning", WarningLimiter)  # "out of space": once a minute
# The authenticated user. web.RequestKey exists from aiohttp 3.14; older versions take a str key.
USER: Any = (
    web.RequestKey("cloudfs_user", UserInfo) if hasattr(web, "RequestKey") else "cloudfs_user"
)


def current_user(request: web.Request) -> UserInfo:
    user: UserInfo = request[USER]
    return user
