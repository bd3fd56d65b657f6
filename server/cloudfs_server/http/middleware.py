"""The error middleware (the one translator from our exceptions to status + JSON body), the
bearer-token middleware, and the runner whose connections answer HTTP parser errors as JSON."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from cloudfs_server.auth import bearer_token
from cloudfs_server.errors import ServerError, ServerFullError, UnauthorizedError
from cloudfs_server.http.login import PUBLIC_PATHS
from cloudfs_server.http.metrics import ERROR_CODE
from cloudfs_server.http.state import CONFIG, FULL_WARNING, META, USER

log = logging.getLogger(__name__)

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
        request[ERROR_CODE] = exc.code
        if isinstance(exc, ServerFullError):
            held = request.app[FULL_WARNING].allow()
            if held is not None:  # one line a minute, not a traceback per request
                log.warning(
                    "disk full: %s; answering 507 server_full until space is freed"
                    " (%d refused since the last warning)",
                    exc.message,
                    held,
                )
        elif exc.status == 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        elif exc.status == 503:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        resp = error_json(exc.status, exc.body())
        resp.headers.update(exc.headers())
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        request[ERROR_CODE] = code
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            limit = request.app[CONFIG].json_max_bytes
            message = f"request body is over the limit of {limit} bytes"
        else:
            message = exc.reason
        resp = error_json(exc.status, {"error": code, "message": message})
        if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110: a 405 lists what is allowed
            resp.headers[hdrs.ALLOW] = ",".join(sorted(exc.allowed_methods))
        return resp
    except ConnectionResetError:
        # The client went away (e.g. in the middle of a block body): nothing was stored and
        # nobody reads this answer; keep the log free of a traceback.
        log.info("%s %s: client disconnected", request.method, request.path)
        return error_json(400, {"error": "bad_request", "message": "connection lost"})
    except asyncio.CancelledError:
        raise
    except Exception:
        request[ERROR_CODE] = "internal"
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_json(500, {"error": "internal", "message": "internal server error"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route under /v1 but login (PUBLIC_PATHS) needs a valid bearer token; the user
    goes to request[USER]."""
    if (request.path.startswith("/v1/") or request.path == "/v1") and (
        request.path not in PUBLIC_PATHS
    ):
        token = bearer_token(request.headers.get("Authorization"))
        user = await request.app[META].authenticate(token)
        if user is None:
            raise UnauthorizedError("the token is not valid")
        request[USER] = user
    return await handler(request)


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own parser errors (non-ASCII path, header
    too long, bad Content-Length, …: raised before any middleware) as our JSON 4xx with one
    log line instead of a plain-text answer and a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = (message or str(exc) or "malformed request").splitlines()[0][:200]
        log.info("bad HTTP request from %s: %s", request.remote, reason)
        code = HTTP_CODES.get(status, "bad_request")
        resp = error_json(status, {"error": code, "message": f"malformed HTTP request: {reason}"})
        resp.force_close()
        return resp


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections use JsonErrorRequestHandler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same server, same state; only the connection handler class differs.
        server.__class__ = JsonErrorServer
        return server
