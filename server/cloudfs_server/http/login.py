"""`POST /v1/login`: a user name and password give a token for one device; and the limiter of
failed logins (per user name and per client address).

The limiter is per process: with several servers behind a balancer each keeps its own counts,
so an attacker spreading attempts over N servers gets N times the budget (docs/server.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from aiohttp import web

from cloudfs_server.errors import BadRequestError, RateLimitedError, UnauthorizedError
from cloudfs_server.http import models as m
from cloudfs_server.http.contract import STORE_ERRORS, Route, answer, register
from cloudfs_server.http.state import CONFIG, META
from cloudfs_server.model import validate_name
from cloudfs_server.passwords import verify_password

# The defaults of `serve --login-failures` and `--login-window`: after this many failures of one
# user name, or from one address, within the window, logins of that name or from that address
# answer 429 until the oldest failure leaves the window.
FAILURES_MAX = 5
WINDOW_S = 60.0
# Keys remembered at most (expired ones are dropped first; then the oldest keys).
KEYS_MAX = 100_000
# Password hashes verified at once (each takes 64 MiB and a core for tens of milliseconds).
VERIFY_CONCURRENCY = 2
WRONG = "wrong user name or password"


class LoginLimiter:
    """Failed logins per key in a sliding window. Not thread-safe: use it on the event loop."""

    def __init__(
        self, failures_max: int = FAILURES_MAX, window_s: float = WINDOW_S, keys_max: int = KEYS_MAX
    ) -> None:
        self.failures_max = failures_max
        self.window_s = window_s
        self.keys_max = keys_max
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after_s(self, keys: list[str], now: float | None = None) -> int | None:
        """Seconds until a login with these keys is allowed again; None: allowed now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= self.failures_max:
                wait = max(wait, times[-self.failures_max] + self.window_s - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self.keys_max:
            for key in list(self._failures):
                self._recent(key, now)
            while len(self._failures) >= self.keys_max:
                del self._failures[next(iter(self._failures))]
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.failures_max)).append(now)

    def succeeded(self, user_key: str) -> None:
        self._failures.pop(user_key, None)


class LoginGuard:
    """What POST /v1/login keeps between requests: the limiter and the hashing semaphore."""

    def __init__(self, failures_max: int = FAILURES_MAX, window_s: float = WINDOW_S) -> None:
        self.limiter = LoginLimiter(failures_max, window_s)
        self.verifying = asyncio.Semaphore(VERIFY_CONCURRENCY)


LOGIN = web.AppKey("login", LoginGuard)


async def login(request: web.Request, body: m.LoginRequest) -> web.Response:
    guard = request.app[LOGIN]
    keys = [f"user:{body.user}", f"addr:{request.remote or ''}"]
    wait_s = guard.limiter.retry_after_s(keys)
    if wait_s is not None:
        raise RateLimitedError(
            f"too many failed logins; try again in {wait_s} s", retry_after_s=wait_s
        )
    try:
        name = validate_name(body.user, "user")
    except BadRequestError:
        name = None  # no user can have this name: the same answer as an unknown one
    found = None if name is None else await request.app[META].password_hash(name)
    encoded = None if found is None else found[1]
    async with guard.verifying:
        ok = await asyncio.to_thread(verify_password, encoded, body.password)
    if not ok or found is None:
        guard.limiter.failed(keys)
        raise UnauthorizedError(WRONG)
    guard.limiter.succeeded(keys[0])
    user = found[0]
    token = await request.app[META].issue_token(user.user_id, body.device)
    return answer(m.LoginAnswer(token=token, device=body.device, user=user.name), status=201)


ROUTES: list[Route] = [
    Route(
        "POST",
        "/v1/login",
        login,
        "login",
        "a token for one device from the user's password (replaces that device's token)",
        {201: ("the device's new token", m.LoginAnswer)},
        {
            400: "bad_request",
            401: "unauthorized (wrong user name or password: one answer for both)",
            429: "rate_limited",
            **STORE_ERRORS,
        },
        body=m.LoginRequest,
        auth=False,
    ),
]
# Paths the bearer-token middleware lets through (they check credentials of their own).
PUBLIC_PATHS = frozenset(route.path for route in ROUTES)


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    app[LOGIN] = LoginGuard(config.login_failures_max, config.login_window_s)
    register(app, ROUTES)
