"""Every call to an `http://` server over plain HTTP/1.1 keep-alive trio sockets (layer 1).

`ApiClient` sends all its requests for an `http://` server here: JSON calls, block uploads and
block downloads (~0.6 ms per call versus ~3 ms for httpx on trio; bodies with a Content-Length
are read with `recv_into` into one preallocated buffer, several times faster than httpx). Only
`https://` servers and answers without Content-Length (`UnsupportedResponse`) go to httpx.
Transport failures raise `TemporaryError`; HTTP errors are translated with
`protocol.error_from_response`.
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlsplit

import trio

from cloudfs import errors
from cloudfs.protocol import error_from_response

log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 64 << 10
IDLE_REUSE_S = 20.0  # the server closes idle keep-alive connections later than this
REQUEST_TIMEOUT_S = 90.0  # longer than the longest long-poll (60 s)


def _error(status: int, body: bytes | bytearray) -> errors.CloudfsError:
    try:
        obj = json.loads(body)
    except ValueError:
        obj = {"message": bytes(body[:200]).decode(errors="replace")}
    return error_from_response(status, obj)


class UnsupportedResponse(Exception):
    """The answer has no Content-Length (or another shape this fetcher does not read)."""


class RawFetcher:
    """GETs with keep-alive connections to one plain-http server. At most `max_idle` idle
    connections are kept; concurrency is bounded by the callers (the block store's limiter)."""

    def __init__(self, server: str, headers: dict[str, str], max_idle: int = 16) -> None:
        parts = urlsplit(server)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"raw fetcher needs an http:// URL, not {server!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: list[tuple[trio.SocketStream, float]] = []
        self.max_idle = max_idle

    @classmethod
    def for_server(cls, server: str, headers: dict[str, str]) -> RawFetcher | None:
        try:
            return cls(server, headers)
        except ValueError:
            return None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream, _ in idle:
            await stream.aclose()

    async def get(self, path: str) -> bytearray:
        """The body of `GET path` (200 only).

        Raises:
            TemporaryError: connection failed or broke mid-answer.
            CloudfsError: the server answered an error (translated from its JSON body).
            UnsupportedResponse: no Content-Length; the caller falls back to httpx.
        """
        status, body = await self.request("GET", path)
        if status == 200:
            return body
        raise _error(status, body)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytearray]:
        """One request; returns (status, body) whatever the status.

        A request on a reused keep-alive connection that fails before any answer byte arrived
        is sent once more on a fresh connection (connections idle for more than
        `IDLE_REUSE_S` are not reused, so the server has not closed them).
        Raises TemporaryError on connection failures and timeouts."""
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += self._headers + "Accept-Encoding: identity\r\n"
        for key, value in (headers or {}).items():
            head += f"{key}: {value}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        request = head.encode() + b"\r\n"
        for attempt in range(2):
            stream, reused = await self._checkout()
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    status, answer, keep = await self._exchange(stream, request, body)
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.TooSlowError,
                _ClosedEarly,
            ) as exc:
                await stream.aclose()
                if reused and attempt == 0 and isinstance(exc, _ClosedEarly):
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise errors.TemporaryError(f"{method} {path}: {exc!r}") from exc
            except BaseException:
                await stream.aclose()
                raise
            if keep and len(self._idle) < self.max_idle:
                self._idle.append((stream, time.monotonic()))
            else:
                await stream.aclose()
            return status, answer
        raise errors.TemporaryError(f"{method} {path}: connection failed twice")

    async def _checkout(self) -> tuple[trio.SocketStream, bool]:
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_REUSE_S:
                return stream, True
            await stream.aclose()
        return await self._connect(), False

    async def _connect(self) -> trio.SocketStream:
        try:
            return await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise errors.TemporaryError(f"cannot reach {self.host}:{self.port}: {exc}") from exc

    async def _exchange(
        self, stream: trio.SocketStream, request: bytes, payload: bytes | None = None
    ) -> tuple[int, bytearray, bool]:
        head = bytearray()
        try:
            if payload is not None and len(payload) < 65536:
                await stream.send_all(request + payload)
            else:
                await stream.send_all(request)
                if payload is not None:
                    await stream.send_all(payload)
            chunk = await stream.receive_some(65536)
        except (OSError, trio.BrokenResourceError) as exc:
            raise _ClosedEarly(f"connection failed before the answer: {exc!r}") from exc
        if not chunk:
            raise _ClosedEarly("connection closed before the answer")
        head += chunk
        while (end := head.find(b"\r\n\r\n")) < 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise trio.BrokenResourceError("connection closed inside the answer headers")
            head += chunk
            if len(head) > _MAX_HEADER_BYTES:
                raise errors.ProtocolError("HTTP answer headers too long")
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise errors.ProtocolError(f"bad HTTP status line {lines[0]!r}") from exc
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if status in (204, 304):
            return status, bytearray(), fields.get("connection", "").lower() != "close"
        if "content-length" not in fields or "chunked" in fields.get("transfer-encoding", ""):
            raise UnsupportedResponse("answer without Content-Length")
        length = int(fields["content-length"])
        body = bytearray(length)
        view = memoryview(body)
        rest = head[end + 4 :]
        have = min(len(rest), length)
        view[:have] = rest[:have]
        sock = stream.socket
        while have < length:
            n = await sock.recv_into(view[have:], length - have)
            if n == 0:
                raise trio.BrokenResourceError("connection closed inside the body")
            have += n
        keep = fields.get("connection", "").lower() != "close"
        return status, body, keep


class _ClosedEarly(Exception):
    pass
