"""Every call to the server over HTTP/1.1 keep-alive trio streams, http or https (layer 1).

`ApiClient` sends all its requests here: JSON calls, block uploads and block downloads (~0.6 ms
per call versus ~3 ms for httpx on trio; bodies with a Content-Length are read with `recv_into`
into one preallocated buffer, several times faster than httpx). https runs over `trio.SSLStream`
(SNI and hostname check, the caller's CA context), so it is not the slow path. Only answers
without Content-Length (`UnsupportedResponse`) go to httpx. Transport failures raise
`TemporaryError`, an untrusted certificate `TlsError`; HTTP errors are translated with
`protocol.error_from_response`.
"""

from __future__ import annotations

import json
import logging
import ssl
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


Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class RawFetcher:
    """Requests with keep-alive connections to one http:// or https:// server. At most
    `max_idle` idle connections are kept; concurrency is bounded by the callers (the block
    store's limiter). https needs `ssl_context` (it decides which CAs are trusted)."""

    def __init__(
        self,
        server: str,
        headers: dict[str, str],
        max_idle: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"raw fetcher needs an http:// or https:// URL, not {server!r}")
        if parts.scheme == "https" and ssl_context is None:
            raise ValueError("an https:// server needs an SSL context")
        self.host = parts.hostname
        self.ssl_context = ssl_context if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.ssl_context is not None else 80)
        self.prefix = parts.path.rstrip("/")
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: list[tuple[Stream, float]] = []
        self.max_idle = max_idle

    @classmethod
    def for_server(
        cls, server: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None = None
    ) -> RawFetcher | None:
        try:
            return cls(server, headers, ssl_context=ssl_context)
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

    async def _checkout(self) -> tuple[Stream, bool]:
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_REUSE_S:
                return stream, True
            await stream.aclose()
        return await self._connect(), False

    async def _connect(self) -> Stream:
        try:
            tcp = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise errors.TemporaryError(f"cannot reach {self.host}:{self.port}: {exc}") from exc
        if self.ssl_context is None:
            return tcp
        tls = trio.SSLStream(
            tcp,
            self.ssl_context,
            server_hostname=self.host,
            https_compatible=True,
        )
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            await tcp.aclose()
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise errors.TlsError(
                    f"the TLS certificate of {self.host}:{self.port} is not trusted"
                    f" ({cause.verify_message}); pass --ca-file FILE or set CLOUDFS_CA_FILE"
                ) from exc
            if isinstance(cause, ssl.SSLError):
                raise errors.TlsError(f"TLS with {self.host}:{self.port} failed: {cause}") from exc
            where = f"{self.host}:{self.port}"
            raise errors.TemporaryError(f"TLS handshake with {where}: {exc!r}") from exc
        except trio.TooSlowError as exc:
            await tcp.aclose()
            raise errors.TemporaryError(
                f"TLS handshake with {self.host}:{self.port}: timeout"
            ) from exc
        except BaseException:
            await tcp.aclose()
            raise
        return tls

    async def _exchange(
        self, stream: Stream, request: bytes, payload: bytes | None = None
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
        if isinstance(stream, trio.SocketStream):
            sock = stream.socket
            while have < length:
                n = await sock.recv_into(view[have:], length - have)
                if n == 0:
                    raise trio.BrokenResourceError("connection closed inside the body")
                have += n
        else:  # TLS: decrypted records come as bytes; copy them into the buffer
            while have < length:
                data = await stream.receive_some(min(length - have, 1 << 20))
                if not data:
                    raise trio.BrokenResourceError("connection closed inside the body")
                view[have : have + len(data)] = data
                have += len(data)
        keep = fields.get("connection", "").lower() != "close"
        return status, body, keep


class _ClosedEarly(Exception):
    pass
