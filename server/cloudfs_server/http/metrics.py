"""Prometheus metrics of one app (its own registry: several apps run side by side in tests), the
middleware that records every request, the `/metrics` route and its admin-token check, and the
rate limit of the full-disk warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from cloudfs_server.errors import NotFoundError, UnauthorizedError
from cloudfs_server.http.contract import Route
from cloudfs_server.http.notify import ChangeNotifier

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The error code of a failed request, set by the error middleware for this one to count.
ERROR_CODE: Any = (
    web.RequestKey("cloudfs_error_code", str) if hasattr(web, "RequestKey") else "cloudfs_error"
)

# Error codes that say the server's stores failed (not the request): counted as store errors.
STORE_ERROR_CODES = frozenset({"server_full", "store_corrupt", "device_store_error", "internal"})
TOKEN_HASH_PREFIX = "sha256:"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The app's registry and its metrics (names in docs/server.md, "Metrics")."""

    def __init__(self, notifier: ChangeNotifier) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cloudfs_http_requests",
            "HTTP requests answered, by route name, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cloudfs_http_request_duration_seconds",
            "time from the request's arrival until its answer is ready to send, by route name",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.bytes_in = Counter(
            "cloudfs_http_received_bytes", "request body bytes (Content-Length)", registry=r
        )
        self.bytes_out = Counter(
            "cloudfs_http_sent_bytes", "answer body bytes (Content-Length)", registry=r
        )
        self.commits = Counter("cloudfs_commits", "content commits that succeeded", registry=r)
        self.conflicts = Counter(
            "cloudfs_conflicts", "commits refused with version_conflict", registry=r
        )
        self.store_errors = Counter(
            "cloudfs_store_errors",
            "requests that failed in the stores (server_full, store_corrupt, internal, ...)",
            ["code"],
            registry=r,
        )
        self.long_polls = Gauge(
            "cloudfs_long_polls_open", "change-feed long-polls held right now", registry=r
        )
        self.long_polls.set_function(lambda: notifier.waiting)


class WarningLimiter:
    """Lets one warning through per `interval_s` (a full disk would otherwise log each request)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self._suppressed = 0  # warnings held back since the last one let through

    def allow(self) -> int | None:
        """None: stay quiet. Else log now; the number is how many were held back meanwhile."""
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self._suppressed += 1
            return None
        self._last = now
        held, self._suppressed = self._suppressed, 0
        return held


def metrics_middleware(metrics: Metrics) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        resp = await handler(request)  # the error middleware inside turns errors into answers
        route = request.match_info.route.name or "unmatched"
        metrics.requests.labels(route, request.method, str(resp.status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        metrics.bytes_in.inc(request.content_length or 0)
        code = request.get(ERROR_CODE)
        if route == "commit" and resp.status == 200:
            metrics.commits.inc()
        elif code == "version_conflict":
            metrics.conflicts.inc()
        if code in STORE_ERROR_CODES:
            metrics.store_errors.labels(code).inc()
        return resp

    return middleware


def count_sent_bytes(metrics: Metrics) -> Any:
    """An `on_response_prepare` hook: the answer's body length is known only then (a block's
    FileResponse finds its size while preparing, after the middleware returned)."""

    async def hook(request: web.Request, resp: web.StreamResponse) -> None:
        if request.method != hdrs.METH_HEAD:
            metrics.bytes_out.inc(resp.content_length or 0)

    return hook


def load_token(path: Path) -> str:
    """The admin token file's one line: the token itself, or `sha256:<hex>` of it.

    Raises: ValueError if the file is readable by others than its owner, or empty."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def token_matches(expected: str, given: str) -> bool:
    """Constant-time check of a presented token against the file's token or its hash."""
    if expected.startswith(TOKEN_HASH_PREFIX):
        digest = hashlib.sha256(given.encode()).hexdigest()
        return hmac.compare_digest(digest, expected[len(TOKEN_HASH_PREFIX) :].lower())
    return hmac.compare_digest(given.encode(), expected.encode())


def metrics_handler(metrics: Metrics, token: str | None, enabled: bool = True) -> Handler:
    """`GET /metrics`: the text format; with `token`, only for `Authorization: Bearer <token>`.
    Not `enabled` (no token file; or metrics on their own address): 404 on this address."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if not enabled:
            raise NotFoundError(
                "metrics are not served here (serve --metrics-token-file or --metrics-address)"
            )
        if token is not None:
            header = request.headers.get(hdrs.AUTHORIZATION, "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not token_matches(token, given.strip()):
                raise UnauthorizedError("/metrics needs the admin token (--metrics-token-file)")
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})

    return handler


def metrics_route(handler: Handler) -> Route:
    """The `GET /metrics` entry of the API app's route table (so /v1/openapi.json has it)."""
    return Route(
        "GET",
        "/metrics",
        handler,
        "metrics",
        "Prometheus text format; needs the admin token of --metrics-token-file (or served "
        "without auth on --metrics-address instead)",
        {200: ("the metrics", str)},
        {
            401: "unauthorized (not the admin token)",
            404: "not_found (no --metrics-token-file: not served on this address)",
        },
        auth=False,
        scheme="metricsToken",
    )
